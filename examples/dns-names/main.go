//go:build linux

// Command dns-names reproduces name resolution: on a
// user-defined network containers resolve each other by name and alias
// through the embedded DNS server (nameserver 127.0.0.11 in their
// resolv.conf); names of another network do not resolve there; other names
// are forwarded to the host's upstream resolver. On the default bridge
// there is no name resolution, and the legacy `--link test5` gives test6
// one-way resolution through its /etc/hosts. Each container's hosts file
// maps its own name and ID to its address.
//
//	go run ./examples/dns-names    # as root
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

// exampleCom is what the outside's resolver answers for example.com.
var exampleCom = netip.MustParseAddr("203.0.113.80")

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	out, err := env.Outside(ctx)
	if !log.OK("the host's uplink eth0 198.51.100.1, the outside at 198.51.100.254", err) {
		return err
	}
	// The host's resolver lives in the outside (the ISP's); the host's
	// resolv.conf also names a local stub that containers cannot reach.
	stop, err := serveUpstream(out.NS, out.Addr)
	if !log.OK("the outside runs the host's DNS resolver on 198.51.100.254:53", err) {
		return err
	}
	defer stop()
	dir, err := os.MkdirTemp("", "dns-names")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	hostResolv := filepath.Join(dir, "host-resolv.conf")
	if err := os.WriteFile(hostResolv, []byte("nameserver 127.0.0.53\nnameserver "+out.Addr.String()+"\nsearch example.com\n"), 0o644); err != nil {
		return err
	}
	srv, err := dnsd.New(dnsd.Config{NS: host, ResolvConf: hostResolv})
	if err != nil {
		return err
	}
	defer srv.Close()
	log.OK(fmt.Sprintf("the DNS server forwards to the host's resolvers less loopback: %v", srv.Upstreams()),
		check.Expect(nil, !slices.Equal(srv.Upstreams(), []netip.AddrPort{netip.AddrPortFrom(out.Addr, 53)}), "wrong"))

	network := func(name, br, subnet string) (*bridge.Network, error) {
		n, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: name, Bridge: br,
			Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(subnet)}}})
		if err != nil {
			return nil, err
		}
		return n, nil
	}
	docker0, err := network("bridge", "docker0", "172.17.0.0/16")
	if !log.OK("the default bridge docker0, 172.17.0.0/16", err) {
		return err
	}
	defer docker0.Delete(context.WithoutCancel(ctx), true)
	var nets []*bridge.Network
	for _, n := range []struct{ name, subnet string }{{"mynet", "172.18.0.0/16"}, {"othernet", "172.19.0.0/16"}} {
		nw, err := network(n.name, "", n.subnet)
		if !log.OK("docker network create "+n.name+" ("+n.subnet+")", err) {
			return err
		}
		defer nw.Delete(context.WithoutCancel(ctx), true)
		if err := srv.AddNetwork(n.name, []netip.Prefix{netip.MustParsePrefix(n.subnet)}, false); err != nil {
			return err
		}
		nets = append(nets, nw)
	}
	mynet, othernet := nets[0], nets[1]

	type ctr struct {
		ns   *netns.NS
		addr netip.Addr
		dir  string // its /etc: resolv.conf and hosts
	}
	// docker run --name NAME --network N [--network-alias A] [--link L]
	runCtr := func(n *bridge.Network, name string, aliases []string, links ...ctr) (ctr, error) {
		c := ctr{dir: filepath.Join(dir, name)}
		var err error
		if c.ns, err = env.Container(); err != nil {
			return c, err
		}
		ep, err := n.Attach(ctx, bridge.EndpointConfig{ID: name, NS: c.ns, DefaultRoute: true})
		if err != nil {
			return c, err
		}
		c.addr = ep.Addrs[0].Addr()
		if err := os.Mkdir(c.dir, 0o755); err != nil {
			return c, err
		}
		id := fmt.Sprintf("%012x", []byte(name + "......")[:6])
		h := dnsd.Hosts{Name: name, ID: id, Addrs: []netip.Addr{c.addr}}
		for _, l := range links {
			h.Extra = append(h.Extra, dnsd.HostEntry{Addr: l.addr, Names: []string{filepath.Base(l.dir)}})
		}
		if err := dnsd.WriteHosts(c.dir, h); err != nil {
			return c, err
		}
		if n == docker0 {
			// The default bridge has no embedded DNS: the host's resolvers.
			return c, dnsd.WriteResolvConf(c.dir, dnsd.ResolvConf{Nameservers: []netip.Addr{out.Addr}})
		}
		if err := srv.Register(n.Config().Name, dnsd.Endpoint{Name: name, Aliases: aliases, Addrs: []netip.Addr{c.addr}}); err != nil {
			return c, err
		}
		if _, err := srv.ListenContainer(ctx, c.ns, []netip.Addr{c.addr}); err != nil {
			return c, err
		}
		return c, dnsd.WriteResolvConf(c.dir, dnsd.ResolvConf{Nameservers: []netip.Addr{netip.MustParseAddr(dnsd.DefaultContainerDNS)},
			Search: []string{strings.TrimSuffix(srv.Domain(), ".")}, Options: []string{"ndots:0"}})
	}

	web, err := runCtr(mynet, "web", []string{"frontend"})
	if !log.OK("docker run --name web --network mynet --network-alias frontend: "+web.addr.String(), err) {
		return err
	}
	db, err := runCtr(mynet, "db", nil)
	if !log.OK("docker run --name db --network mynet: "+db.addr.String(), err) {
		return err
	}
	cache, err := runCtr(othernet, "cache", nil)
	if !log.OK("docker run --name cache --network othernet: "+cache.addr.String(), err) {
		return err
	}
	rc, err := dnsd.ReadResolvConf(filepath.Join(web.dir, "resolv.conf"))
	log.OK(fmt.Sprintf("web's resolv.conf: nameserver %v", rc.Nameservers),
		check.Expect(err, !slices.Equal(rc.Nameservers, []netip.Addr{netip.MustParseAddr("127.0.0.11")}), "wrong"))

	dnsAddr := netip.MustParseAddrPort("127.0.0.11:53")
	expect := func(what string, c ctr, name string, want netip.Addr) {
		got, err := lookup(ctx, c.ns, dnsAddr, name)
		log.OK(fmt.Sprintf("%s: %s is %v", what, name, got), check.Expect(err, !slices.Equal(got, []netip.Addr{want}), "want %v", want))
	}
	expect("web resolves db by name", web, "db", db.addr)
	expect("db resolves web by name", db, "web", web.addr)
	expect("db resolves web by its alias", db, "frontend", web.addr)
	expect("db resolves web under the domain", db, "WEB."+srv.Domain(), web.addr)
	log.OK("web reaches db by the name's address", nstest.Ping(ctx, web.ns, db.addr))
	_, err = lookup(ctx, web.ns, dnsAddr, "cache")
	log.Refused("web resolves cache, on othernet (NXDOMAIN)", err)
	_, err = lookup(ctx, cache.ns, dnsAddr, "web")
	log.Refused("cache resolves web (NXDOMAIN)", err)
	expect("web resolves example.com through the host's resolver", web, "example.com.", exampleCom)

	// The default bridge: no embedded DNS; --link writes /etc/hosts.
	test5, err := runCtr(docker0, "test5", nil)
	if !log.OK("docker run --name test5 (default bridge): "+test5.addr.String(), err) {
		return err
	}
	test6, err := runCtr(docker0, "test6", nil, test5)
	if !log.OK("docker run --name test6 --link test5 (default bridge): "+test6.addr.String(), err) {
		return err
	}
	_, err = lookup(ctx, test6.ns, dnsAddr, "test5")
	log.Refused("test6 resolves test5 by DNS (no embedded DNS on the default bridge)", err)
	got, err := hostsLookup(test6.dir, "test5")
	log.OK(fmt.Sprintf("test6 resolves test5 through its /etc/hosts: %v", got), check.Expect(err, got != test5.addr, "want %v", test5.addr))
	log.OK("test6 reaches test5 by that address", nstest.Ping(ctx, test6.ns, got))
	_, err = hostsLookup(test5.dir, "test6")
	log.Refused("test5 resolves test6 (the link is one-way)", err)

	for _, c := range []ctr{web, test5} {
		name := filepath.Base(c.dir)
		a, err := hostsLookup(c.dir, name)
		id := fmt.Sprintf("%012x", []byte(name + "......")[:6])
		b, err2 := hostsLookup(c.dir, id)
		log.OK(fmt.Sprintf("%s's /etc/hosts maps its name and ID %s to %v", name, id, a),
			check.Expect(errors.Join(err, err2), a != c.addr || b != c.addr, "want %v", c.addr))
	}
	st := srv.Stats()
	log.Printf("DNS server counters: by type %v, by answer %v, forwarded %d", st.ByType, st.ByRcode, st.Forwarded)
	return nil
}

// lookup asks server from ns for the A records of name (relative names
// get no search domain: they are asked as single labels, as with
// ndots:0 and a name that resolves).
func lookup(ctx context.Context, ns *netns.NS, server netip.AddrPort, name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, nil, "udp", server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	r, err := co.ReadMsg()
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A)
			out = append(out, addr.Unmap())
		}
	}
	return out, nil
}

// hostsLookup finds name in dir/hosts, as the C library would.
func hostsLookup(dir, name string) (netip.Addr, error) {
	f, err := os.Open(filepath.Join(dir, "hosts"))
	if err != nil {
		return netip.Addr{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && slices.Contains(fields[1:], name) {
			return netip.ParseAddr(fields[0])
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: not in %s/hosts", name, dir)
}

// serveUpstream runs a DNS server in ns on addr:53 (UDP) that answers
// example.com with 203.0.113.80 and everything else NXDOMAIN.
func serveUpstream(ns *netns.NS, addr netip.Addr) (func(), error) {
	pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(addr, 53).String())
	if err != nil {
		return nil, err
	}
	started := make(chan struct{})
	s := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			if q := r.Question[0]; strings.EqualFold(q.Name, "example.com.") && q.Qtype == dns.TypeA {
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: exampleCom.AsSlice()}}
			} else {
				m.Rcode = dns.RcodeNameError
			}
			w.WriteMsg(m)
		})}
	done := make(chan struct{})
	go func() { defer close(done); s.ActivateAndServe() }()
	<-started
	return func() {
		s.Shutdown()
		pc.Close()
		<-done
	}, nil
}
