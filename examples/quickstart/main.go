// Command quickstart is the shortest tour of nsnet: inside a sandbox host
// namespace it creates a bridge network (the next free subnet from the
// IPAM's default pools, like `docker network create`), attaches two
// containers to it, and checks that they reach each other and the gateway
// over ICMP and TCP; then it takes everything down again.
//
//	go run ./examples/quickstart    # as root
//
// It prints each check and exits non-zero if one fails; it leaves nothing
// behind, and never touches the machine's own network namespace.
package main

import (
	"context"
	"fmt"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/internal/check"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host

	// docker network create quickstart
	net, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "quickstart"})
	if !log.OK("network quickstart", err) {
		return err
	}
	defer net.Delete(ctx, true)
	cfg := net.Config()
	log.Printf("bridge %s, subnet %s, gateway %s, MTU %d", cfg.Bridge, cfg.Subnets[0].Subnet, cfg.Subnets[0].Gateway, cfg.MTU)

	// Two containers: each a network namespace, attached with a veth pair
	// whose container end is created in place as eth0.
	var ctrs []*netns.NS
	var eps []bridge.Endpoint
	for _, name := range []string{"web", "db"} {
		ctr, err := env.Container()
		if err != nil {
			return err
		}
		ep, err := net.Attach(ctx, bridge.EndpointConfig{ID: name, NS: ctr, DefaultRoute: true})
		if !log.OK(fmt.Sprintf("docker run --network quickstart --name %s: %s %v, MAC %s", name, ep.IfName, ep.Addrs, ep.MAC), err) {
			return err
		}
		ctrs, eps = append(ctrs, ctr), append(eps, ep)
	}
	web, db := ctrs[0], ctrs[1]
	webAddr, dbAddr := eps[0].Addrs[0].Addr(), eps[1].Addrs[0].Addr()

	log.OK("web pings the gateway", nstest.Ping(ctx, web, cfg.Subnets[0].Gateway))
	log.OK("web pings db", nstest.Ping(ctx, web, dbAddr))
	log.OK("db pings web", nstest.Ping(ctx, db, webAddr))
	log.OK("TCP from web to a server in db", check.Exchange(ctx, web, db, fmt.Sprintf("%s:5432", dbAddr), webAddr.String()))
	log.OK("the host reaches web", nstest.Ping(ctx, host, webAddr))

	for _, ep := range eps {
		if err := net.Detach(ctx, ep.ID); !log.OK("detach "+ep.ID, err) {
			return err
		}
	}
	links, err := web.Links()
	log.OK("web is back to lo only", check.Expect(err, len(links) != 1, "%d links", len(links)))
	log.OK("docker network rm quickstart", net.Delete(ctx, false))
	return nil
}
