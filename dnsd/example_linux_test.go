package dnsd_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// A server for one network, answering on its gateway as Podman's
// aardvark-dns does: a container resolves its peers by name and alias. The
// host is a namespace of its own; its bridge network is made first, so
// that the server knows the interface its clients come in on.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	alloc, _ := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	nw, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "mynet",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.18.0.0/16")}}})
	if err != nil {
		log.Fatal(err)
	}
	defer nw.Delete(ctx, true)
	cfg := nw.Config()
	gw := cfg.Subnets[0].Gateway

	srv, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{}}) // names only, no forwarding
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	if err := srv.AddNetwork("mynet", []netip.Prefix{cfg.Subnets[0].Subnet}, false, cfg.Bridge); err != nil {
		log.Fatal(err)
	}
	if _, err := srv.ListenHost(ctx, host, netip.AddrPortFrom(gw, 53)); err != nil {
		log.Fatal(err)
	}

	var addrs []netip.Addr
	var client *netns.NS
	for _, name := range []string{"web", "db"} {
		ctr, err := netns.New()
		if err != nil {
			log.Fatal(err)
		}
		defer ctr.Close()
		ep, err := nw.Attach(ctx, bridge.EndpointConfig{ID: name, NS: ctr, DefaultRoute: true})
		if err != nil {
			log.Fatal(err)
		}
		addrs = append(addrs, ep.Addrs[0].Addr())
		client = ctr
	}
	if err := srv.Register("mynet", dnsd.Endpoint{Name: "web", Aliases: []string{"frontend"}, Addrs: addrs[:1]}); err != nil {
		log.Fatal(err)
	}

	// db's resolver, as its resolv.conf (dnsd.WriteResolvConf) would set it.
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return client.Dial(ctx, nil, network, netip.AddrPortFrom(gw, 53).String())
	}}
	for _, name := range []string{"web", "frontend", "web.nsnet.internal"} {
		got, err := r.LookupNetIP(ctx, "ip4", name)
		fmt.Println(name, got, err)
	}
	// Output:
	// web [172.18.0.2] <nil>
	// frontend [172.18.0.2] <nil>
	// web.nsnet.internal [172.18.0.2] <nil>
}
