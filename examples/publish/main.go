//go:build linux

// Command publish reproduces port publishing: a container's
// services published on the host in every form of `docker run -p` and
// with `-P`, reached from an outside client through the host's uplink
// address, from the host itself and from another container; `docker port`
// lists them; unpublishing stops all of it.
//
//	go run ./examples/publish    # as root
package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
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
	subnet := netip.MustParsePrefix("172.17.0.0/16")
	docker0, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "bridge", Bridge: "docker0",
		Subnets: []ipam.SubnetConfig{{Subnet: subnet}}})
	if !log.OK("docker0 with 172.17.0.1/16", err) {
		return err
	}
	defer docker0.Delete(ctx, true)
	if err := nat.Masquerade(ctx, host, nat.Network{Bridge: "docker0", Subnets: []netip.Prefix{subnet}}); !log.OK("masquerade", err) {
		return err
	}

	attach := func(id string) (*netns.NS, netip.Addr, error) {
		ns, err := env.Container()
		if err != nil {
			return nil, netip.Addr{}, err
		}
		ep, err := docker0.Attach(ctx, bridge.EndpointConfig{ID: id, NS: ns, DefaultRoute: true})
		if err != nil {
			return nil, netip.Addr{}, err
		}
		return ns, ep.Addrs[0].Addr(), nil
	}
	web, webAddr, err := attach("web")
	if !log.OK("docker run --name web: "+webAddr.String()+", serving tcp 80, 81, 5000 and udp 53", err) {
		return err
	}
	for _, s := range []struct{ proto, addr string }{{"tcp", ":80"}, {"tcp", ":81"}, {"tcp", ":5000"}, {"udp", ":53"}} {
		srv, err := nstest.NewServer(web, s.proto, "0.0.0.0"+s.addr)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	client, _, err := attach("client")
	if err != nil {
		return err
	}

	mp, err := portmap.New(host, portmap.Config{})
	if err != nil {
		return err
	}
	defer mp.Close()
	loopback := netip.MustParseAddr("127.0.0.1")
	var published []portmap.Mapping
	for _, p := range []struct {
		flag string
		m    portmap.Mapping
	}{
		{"-p 80:80", portmap.Mapping{HostPort: 80, CtrPort: 80}},
		{"-p 5000:5000", portmap.Mapping{HostPort: 5000, CtrPort: 5000}},
		{"-p 8080:80", portmap.Mapping{HostPort: 8080, CtrPort: 80}},
		{"-p 127.0.0.1:8081:80", portmap.Mapping{HostAddr: loopback, HostPort: 8081, CtrPort: 80}},
		{"-p 198.51.100.1:8082:80", portmap.Mapping{HostAddr: out.Uplink, HostPort: 8082, CtrPort: 80}},
		{"-p 9080-9081:80-81", portmap.Mapping{HostPort: 9080, HostPortEnd: 9081, CtrPort: 80, CtrPortEnd: 81}},
		{"-p 5353:53/udp", portmap.Mapping{Proto: "udp", HostPort: 5353, CtrPort: 53}},
		{"-P (EXPOSE 80)", portmap.Mapping{CtrPort: 80}},
	} {
		p.m.CtrAddr, p.m.ID = webAddr, "web"
		m, err := mp.Add(ctx, p.m)
		if !log.OK(fmt.Sprintf("%-24s published as %s", p.flag, m), err) {
			return err
		}
		published = append(published, m)
	}
	// Port 8080 is taken now: a second container cannot have it.
	_, err = mp.Add(ctx, portmap.Mapping{HostPort: 8080, CtrAddr: webAddr, CtrPort: 81, ID: "other"})
	log.Refused("another -p 8080:81 while 8080 is published", err)

	// reach checks that proto at (host address, port) gets to web.
	reach := func(from *netns.NS, proto string, at netip.AddrPort) error {
		r, err := nstest.Exchange(ctx, from, proto, at.String(), "hello")
		return check.Expect(err, r.Data != "hello", "%s answered %q", at, r.Data)
	}
	for _, m := range published {
		ports := []int{m.HostPort}
		if m.HostPortEnd != 0 {
			ports = append(ports, m.HostPortEnd)
		}
		for _, port := range ports {
			at := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, uint16(port)) }
			if m.HostAddr == loopback {
				log.OK(fmt.Sprintf("the host reaches %s", at(loopback)), reach(host, m.Proto, at(loopback)))
				log.Refused(fmt.Sprintf("the outside reaches the 127.0.0.1 mapping at %s", at(out.Uplink)), reach(out.NS, m.Proto, at(out.Uplink)))
				continue
			}
			log.OK(fmt.Sprintf("the outside reaches %s/%s", at(out.Uplink), m.Proto), reach(out.NS, m.Proto, at(out.Uplink)))
			log.OK(fmt.Sprintf("another container reaches %s/%s", at(out.Uplink), m.Proto), reach(client, m.Proto, at(out.Uplink)))
			if !m.HostAddr.IsValid() {
				log.OK(fmt.Sprintf("the host reaches %s/%s", at(loopback), m.Proto), reach(host, m.Proto, at(loopback)))
			}
		}
	}
	r, err := nstest.Exchange(ctx, out.NS, "tcp", netip.AddrPortFrom(out.Uplink, 8080).String(), "hello")
	log.OK(fmt.Sprintf("web sees the outside client's own address (%s)", r.Peer.Addr()),
		check.Expect(err, r.Peer.Addr() != out.Addr, "want %s", out.Addr))

	// docker port web
	list, err := mp.List(ctx)
	log.OK(fmt.Sprintf("docker port web: %d ports", len(list)), err)
	for _, m := range list {
		log.Printf("%s", m)
	}

	// Unpublished (the container stopped): rules before links.
	for _, m := range published {
		if err := mp.Remove(ctx, m); !log.OK("unpublish "+m.String(), err) {
			return err
		}
	}
	log.Refused("the outside reaches 198.51.100.1:8080 after unpublishing", reach(out.NS, "tcp", netip.AddrPortFrom(out.Uplink, 8080)))
	log.Refused("the host reaches 127.0.0.1:8081 after unpublishing", reach(host, "tcp", netip.AddrPortFrom(loopback, 8081)))
	list, err = mp.List(ctx)
	log.OK("docker port web: nothing left", check.Expect(err, len(list) != 0, "%v", list))
	return nil
}
