package macvlan_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/macvlan"
	"github.com/nsnet/nsnet/netns"
)

// S10 on one host: `docker network create -d macvlan --subnet
// 172.29.0.0/16 --gateway 172.29.0.254 -o parent=eth0 s10` and `docker run
// --network s10 --ip 172.29.0.81`. It needs the kernel (and root), so it is
// compiled, not run.
func Example() {
	ctx := context.Background()
	host, err := netns.Open("host1") // the namespace whose eth0 is the parent
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
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
	ctr, err := netns.Open("c1")
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	ep, err := n.Attach(ctx, macvlan.EndpointConfig{ID: "c1", NS: ctr, Addrs: []netip.Addr{netip.MustParseAddr("172.29.0.81")}, DefaultRoute: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ep.IfName, ep.Addrs[0], ep.MAC)
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
