package overlay_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/overlay"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

// `docker network create -d overlay --subnet 10.20.0.0/24 ov` and `docker
// run --network ov` on one host: a namespace of its own, whose eth0 (one
// end of a veth pair) is its underlay. On a real cluster every host Joins
// with the same store (etcd, through package ipam/etcdstore) and the
// containers of all of them share the network.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	lan, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer lan.Close()
	if _, err := veth.Pair(ctx, host, veth.Config{Name: "eth0", Peer: veth.End{NS: lan, Name: "lan0"}, Up: true}); err != nil {
		log.Fatal(err)
	}
	h, _ := host.Netlink()
	eth0, _ := h.LinkByName("eth0")
	vtep := netip.MustParseAddr("198.18.0.1")
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: vtep.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		log.Fatal(err)
	}

	store := ipam.NewMemoryStore()
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		log.Fatal(err)
	}
	hst, err := overlay.Join(ctx, overlay.HostConfig{NS: host, Name: "host1", VTEP: vtep, Store: store, Alloc: alloc})
	if err != nil {
		log.Fatal(err)
	}
	defer hst.Close(ctx)
	nw, err := hst.Create(ctx, overlay.Config{Name: "ov", VNI: 4096,
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.20.0.0/24")}}})
	if err != nil {
		log.Fatal(err)
	}
	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	ep, err := nw.Attach(ctx, overlay.EndpointConfig{ID: "web", NS: ctr})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ep.IfName, ep.Addrs, "MTU", ep.MTU)
	fmt.Println(nw.Detach(ctx, "web"), hst.Delete(ctx, "ov"))
	// Output:
	// eth0 [10.20.0.2/24] MTU 1450
	// <nil> <nil>
}
