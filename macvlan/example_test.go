package macvlan_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/macvlan"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
)

// On one host: `docker network create -d macvlan --subnet
// 172.29.0.0/16 --gateway 172.29.0.254 -o parent=eth0 s10` and `docker run
// --network s10 --ip 172.29.0.81`. The host is a namespace of its own, and
// its eth0 the veth that plays its uplink.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	lan, err := netns.New() // the other end of the uplink
	if err != nil {
		log.Fatal(err)
	}
	defer lan.Close()
	if _, err := veth.Pair(ctx, host, veth.Config{Name: "eth0", Peer: veth.End{NS: lan, Name: "lan0"}, Up: true}); err != nil {
		log.Fatal(err)
	}
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		log.Fatal(err)
	}
	n, err := macvlan.New(ctx, host, alloc, macvlan.Config{
		Name:    "s10",
		Parent:  "eth0",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.29.0.0/16"), Gateway: netip.MustParseAddr("172.29.0.254")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer n.Delete(ctx, true)
	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	ep, err := n.Attach(ctx, macvlan.EndpointConfig{ID: "c1", NS: ctr, Addrs: []netip.Addr{netip.MustParseAddr("172.29.0.81")}, DefaultRoute: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n.Config().Mode, ep.IfName, ep.Addrs)
	fmt.Println(n.Detach(ctx, "c1", ctr))
	// Output:
	// bridge eth0 [172.29.0.81/16]
	// <nil>
}

// The host reaches its own containers through a shim.
func ExampleNetwork_AddShim() {
	ctx := context.Background()
	host, _ := netns.Open("host1")
	defer host.Close()
	alloc, _ := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	n, err := macvlan.Open(ctx, host, alloc, "s10")
	if err != nil {
		log.Fatal(err)
	}
	shim, err := n.AddShim(ctx, macvlan.ShimConfig{
		Addr:   netip.MustParseAddr("172.29.0.91"),
		Routes: []netip.Prefix{netip.MustParsePrefix("172.29.0.80/28")},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(shim.Name, shim.Addr, shim.Routes)
}
