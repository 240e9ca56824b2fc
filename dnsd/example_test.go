package dnsd_test

import (
	"context"
	"log"
	"net/netip"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/netns"
)

// A server for one network: names resolve for its containers, on its
// gateway (Podman style) and on 127.0.0.11 inside a container (Docker
// style); other names go to the host's resolvers.
func Example() {
	ctx := context.Background()
	host, err := netns.Open("host") // the namespace where the bridges are
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	srv, err := dnsd.New(dnsd.Config{NS: host}) // upstreams from /etc/resolv.conf
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	gw := netip.MustParseAddr("172.18.0.1")
	if err := srv.AddNetwork("mynet", []netip.Prefix{netip.MustParsePrefix("172.18.0.0/16")}, false); err != nil {
		log.Fatal(err)
	}
	if _, err := srv.ListenHost(ctx, host, netip.AddrPortFrom(gw, 53)); err != nil {
		log.Fatal(err)
	}
	web := netip.MustParseAddr("172.18.0.2")
	if err := srv.Register("mynet", dnsd.Endpoint{Name: "web", Aliases: []string{"frontend"}, Addrs: []netip.Addr{web}}); err != nil {
		log.Fatal(err)
	}
	// The container's resolv.conf points at the gateway.
	if err := dnsd.WriteResolvConf("/run/ctr/web", dnsd.ResolvConf{
		Nameservers: []netip.Addr{gw}, Search: []string{"nsnet.internal"}}); err != nil {
		log.Fatal(err)
	}

	// Docker style: 127.0.0.11 inside the container's namespace.
	ctr, err := netns.Open("/run/ctr/web/netns")
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	if _, err := srv.ListenContainer(ctx, ctr, []netip.Addr{web}); err != nil {
		log.Fatal(err)
	}
}
