package bridge_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// `docker network create --subnet 172.30.0.0/16 mynet` and `docker run
// --network mynet`, in a host namespace of its own.
func Example() {
	ctx := context.Background()
	host, err := netns.New() // any namespace can be the host
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		log.Fatal(err)
	}

	nw, err := bridge.New(ctx, host, alloc, bridge.Config{
		Name:    "mynet",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.30.0.0/16")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer nw.Delete(ctx, true)
	cfg := nw.Config()
	fmt.Println(cfg.Bridge == bridge.BridgeName("mynet"), cfg.Subnets[0].Subnet, "gateway", cfg.Subnets[0].Gateway)

	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	ep, err := nw.Attach(ctx, bridge.EndpointConfig{ID: "web", NS: ctr, DefaultRoute: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ep.IfName, ep.Addrs)

	// `docker network disconnect` then `docker network rm`.
	if err := nw.Detach(ctx, "web"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(nw.Delete(ctx, false))
	// Output:
	// true 172.30.0.0/16 gateway 172.30.0.1
	// eth0 [172.30.0.2/16]
	// <nil>
}
