//go:build linux

// Command quickstart is the shortest tour of nsnet: inside a sandbox host
// namespace with an uplink to an "outside" namespace, it creates a bridge
// network (the next free subnet from the IPAM's default pools, like
// `docker network create`) with outbound NAT, attaches two containers to
// it, checks that they reach each other and the gateway over ICMP and TCP
// and the outside through the host's address, resolves a peer by name
// through the embedded DNS server, publishes a port of one
// (`-p 8080:80`) and reaches it from the outside; then it takes everything
// down again.
//
//	go run ./examples/quickstart    # as root
//
// It prints each check and exits non-zero if one fails; it leaves nothing
// behind, and never touches the machine's own network namespace.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	out, err := env.Outside(ctx)
	if !log.OK("the host's uplink eth0 198.51.100.1, the outside at 198.51.100.254", err) {
		return err
	}

	// docker network create quickstart
	nw, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "quickstart"})
	if !log.OK("network quickstart", err) {
		return err
	}
	defer nw.Delete(ctx, true)
	cfg := nw.Config()
	log.Printf("bridge %s, subnet %s, gateway %s, MTU %d", cfg.Bridge, cfg.Subnets[0].Subnet, cfg.Subnets[0].Gateway, cfg.MTU)
	// Egress: masquerade the subnet behind the host's address.
	masq := nat.Network{Bridge: cfg.Bridge, Subnets: []netip.Prefix{cfg.Subnets[0].Subnet}}
	if err := nat.Masquerade(ctx, host, masq); !log.OK("outbound NAT for "+cfg.Subnets[0].Subnet.String(), err) {
		return err
	}

	// Two containers: each a network namespace, attached with a veth pair
	// whose container end is created in place as eth0.
	var ctrs []*netns.NS
	var eps []bridge.Endpoint
	for _, name := range []string{"web", "db"} {
		ctr, err := env.Container()
		if err != nil {
			return err
		}
		ep, err := nw.Attach(ctx, bridge.EndpointConfig{ID: name, NS: ctr, DefaultRoute: true})
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

	// Names: the embedded DNS server answers the network's names on
	// 127.0.0.11 in each container, as Docker's does.
	dns, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{}})
	if err != nil {
		return err
	}
	defer dns.Close()
	err = errors.Join(dns.AddNetwork("quickstart", []netip.Prefix{cfg.Subnets[0].Subnet}, false),
		dns.Register("quickstart", dnsd.Endpoint{Name: "web", Addrs: []netip.Addr{webAddr}}),
		dns.Register("quickstart", dnsd.Endpoint{Name: "db", Addrs: []netip.Addr{dbAddr}}))
	if err != nil {
		return err
	}
	ln53, err := dns.ListenContainer(ctx, web, []netip.Addr{webAddr})
	if err != nil {
		return err
	}
	defer ln53.Close()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return web.Dial(ctx, nil, network, "127.0.0.11:53")
	}}
	got, err := resolver.LookupNetIP(ctx, "ip4", "db")
	log.OK(fmt.Sprintf("web resolves db to %v", got), check.Expect(err, len(got) != 1 || got[0] != dbAddr, "want %s", dbAddr))
	log.OK("the host reaches web", nstest.Ping(ctx, host, webAddr))
	log.OK("web reaches the outside, which sees the host's address",
		check.Exchange(ctx, web, out.NS, out.Addr.String()+":80", out.Uplink.String()))

	// docker run -p 8080:80 web: published on every address of the host.
	srv, err := nstest.NewServer(web, "tcp", "0.0.0.0:80")
	if err != nil {
		return err
	}
	defer srv.Close()
	ports, err := portmap.New(host, portmap.Config{})
	if err != nil {
		return err
	}
	defer ports.Close()
	m, err := ports.Add(ctx, portmap.Mapping{HostPort: 8080, CtrAddr: webAddr, CtrPort: 80, ID: "web"})
	if !log.OK("published "+m.String(), err) {
		return err
	}
	at := netip.AddrPortFrom(out.Uplink, 8080).String()
	r, err := nstest.Exchange(ctx, out.NS, "tcp", at, "hello")
	log.OK("the outside reaches web at "+at+"; web sees the client's own address "+r.Peer.Addr().String(),
		check.Expect(err, r.Peer.Addr() != out.Addr, "want %s", out.Addr))
	// Unpublish before the container goes: rules before links.
	log.OK("unpublished", ports.Remove(ctx, m))

	for _, ep := range eps {
		if err := nw.Detach(ctx, ep.ID); !log.OK("detach "+ep.ID, err) {
			return err
		}
	}
	links, err := web.Links()
	log.OK("web is back to lo only", check.Expect(err, len(links) != 1, "%d links", len(links)))
	log.OK("docker network rm quickstart", nw.Delete(ctx, false))
	return nil
}
