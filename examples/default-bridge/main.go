//go:build linux

// Command default-bridge reproduces Docker's default bridge
// network: docker0 with 172.17.0.1/16, three containers attached with the
// next free addresses and a default route via the gateway, reaching each
// other and the gateway; then the network is listed as `brctl show` and
// `docker network inspect bridge` would show it.
//
//	go run ./examples/default-bridge    # as root
package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log := env.Log
	// docker0: 172.17.0.0/16, gateway 172.17.0.1.
	docker0, err := bridge.New(ctx, env.Host, env.Alloc, bridge.Config{
		Name:    "bridge",
		Bridge:  "docker0",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}},
	})
	if !log.OK("docker0 with 172.17.0.1/16", err) {
		return err
	}
	defer docker0.Delete(ctx, true)

	var ctrs []*netns.NS
	var eps []bridge.Endpoint
	for i := range 3 {
		ctr, err := env.Container()
		if err != nil {
			return err
		}
		id := fmt.Sprintf("test%d", i+1)
		ep, err := docker0.Attach(ctx, bridge.EndpointConfig{ID: id, NS: ctr, DefaultRoute: true})
		if !log.OK(fmt.Sprintf("docker run --name %s: %s %s on %s", id, ep.IfName, fmt.Sprint(ep.Addrs), ep.HostVeth), err) {
			return err
		}
		want := fmt.Sprintf("172.17.0.%d/16", i+2)
		log.OK(id+" got the next free address "+want, check.Expect(nil, len(ep.Addrs) != 1 || ep.Addrs[0].String() != want, "got %v", ep.Addrs))
		ctrs, eps = append(ctrs, ctr), append(eps, ep)
	}
	for i, c := range ctrs {
		log.OK(fmt.Sprintf("test%d pings the gateway 172.17.0.1", i+1), nstest.Ping(ctx, c, netip.MustParseAddr("172.17.0.1")))
		for j, e := range eps {
			if i != j {
				log.OK(fmt.Sprintf("test%d pings test%d (%s)", i+1, j+1, e.Addrs[0].Addr()), nstest.Ping(ctx, c, e.Addrs[0].Addr()))
			}
		}
	}
	log.OK("TCP from test1 to test3", check.Exchange(ctx, ctrs[0], ctrs[2], "172.17.0.4:80", "172.17.0.2"))

	// brctl show docker0 / docker network inspect bridge
	info, err := docker0.Inspect(ctx)
	if !log.OK("inspect the network", err) {
		return err
	}
	log.Printf("bridge name  subnet         gateway     interfaces")
	log.Printf("%-12s %-14s %-11s %d", info.Bridge, info.Subnets[0].Subnet, info.Subnets[0].Gateway, len(info.Endpoints))
	for _, e := range info.Endpoints {
		log.Printf("  %-6s %-12s %-17s %s (%s in the container)", e.ID, e.HostVeth, e.MAC, fmt.Sprint(e.Addrs), e.IfName)
	}
	log.OK("inspect lists the three containers", check.Expect(nil, len(info.Endpoints) != 3, "%d endpoints", len(info.Endpoints)))
	for _, e := range eps {
		if err := docker0.Detach(ctx, e.ID); err != nil {
			return err
		}
	}
	return docker0.Delete(ctx, false)
}
