package nat_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
)

// Docker's MASQUERADE rule for a bridge network: its subnet leaves the host
// with the host's address, through any interface but its own bridge. The bridge network comes first, as with `docker network
// create`.
func ExampleMasquerade() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()

	alloc, _ := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	subnet := netip.MustParsePrefix("172.18.0.0/16")
	nw, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "mynet", Bridge: "br-mynet", Subnets: []ipam.SubnetConfig{{Subnet: subnet}}})
	if err != nil {
		log.Fatal(err)
	}
	defer nw.Delete(ctx, true)

	n := nat.Network{Bridge: "br-mynet", Subnets: []netip.Prefix{subnet}}
	if err := nat.Masquerade(ctx, host, n); err != nil {
		log.Fatal(err)
	}
	subnets, err := nat.Subnets(ctx, host, "br-mynet")
	fmt.Println(subnets, err)
	forwarding, _ := host.Sysctl("net.ipv4.ip_forward")
	fmt.Println("ip_forward", forwarding)

	fmt.Println(nat.Remove(ctx, host, "br-mynet"))
	// An internal network has no egress.
	fmt.Println(nat.Masquerade(ctx, host, nat.Network{Bridge: "br-internal", Subnets: n.Subnets, Internal: true}))
	// Output:
	// [172.18.0.0/16] <nil>
	// ip_forward 1
	// <nil>
	// nat: an internal network has no egress
}
