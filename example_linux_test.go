package nsnet_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// The packages together: a host (here a namespace of its own), a bridge
// network with outbound NAT, and a container on it that reaches its
// gateway; then everything down again, rules before links.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		log.Fatal(err)
	}

	nw, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "mynet"}) // the next free subnet
	if err != nil {
		log.Fatal(err)
	}
	cfg := nw.Config()
	if err := nat.Masquerade(ctx, host, nat.Network{Bridge: cfg.Bridge, Subnets: []netip.Prefix{cfg.Subnets[0].Subnet}}); err != nil {
		log.Fatal(err)
	}
	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	ep, err := nw.Attach(ctx, bridge.EndpointConfig{ID: "web", NS: ctr, DefaultRoute: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("web:", ep.Addrs[0], "gateway", cfg.Subnets[0].Gateway)
	fmt.Println("ping:", nstest.Ping(ctx, ctr, cfg.Subnets[0].Gateway))

	fmt.Println(nat.Remove(ctx, host, cfg.Bridge), nw.Detach(ctx, "web"), nw.Delete(ctx, false))
	// Output:
	// web: 172.17.0.2/16 gateway 172.17.0.1
	// ping: <nil>
	// <nil> <nil> <nil>
}
