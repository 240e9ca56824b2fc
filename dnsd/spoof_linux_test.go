package dnsd_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// spoof sends a query for name from ns with the forged source src to dst:
// a real packet with another's address, as an attacker with CAP_NET_RAW
// (or CAP_NET_ADMIN: IP_TRANSPARENT, used here) in its namespace sends it.
func spoof(t testing.TB, ns *netns.NS, src, dst netip.AddrPort, name string) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	q.SetEdns0(4096, false)
	b, _ := q.Pack()
	err := ns.Do(func() error {
		family, level, opt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_TRANSPARENT
		if src.Addr().Is6() {
			family, level, opt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, sockaddr(src)); err != nil {
			return err
		}
		return unix.Sendto(fd, b, 0, sockaddr(dst))
	})
	if err != nil {
		t.Fatalf("spoofing %s from %s: %v", dst, src, err)
	}
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// victim is a UDP socket of a container that an attacker names as the
// source of its queries: whatever the server sends back lands here.
type victim struct {
	pc   net.PacketConn
	addr netip.AddrPort
}

func newVictim(t testing.TB, ns *netns.NS, a netip.Addr) *victim {
	t.Helper()
	pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &victim{pc: pc, addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// reflected waits for what the server sent the victim: the server answers
// every query, so something comes, and it must be a bare REFUSED no
// larger than the query (no amplification, no names, no recursion).
func (v *victim) reflected(t testing.TB, what string) {
	t.Helper()
	b := make([]byte, 65535)
	v.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := v.pc.ReadFrom(b)
	if err != nil {
		t.Errorf("%s: the victim got nothing: %v", what, err)
		return
	}
	m := new(dns.Msg)
	if err := m.Unpack(b[:n]); err != nil {
		t.Errorf("%s: the victim got garbage: %v", what, err)
		return
	}
	if m.Rcode != dns.RcodeRefused || len(m.Answer) > 0 || m.RecursionAvailable || n > 64 {
		t.Errorf("%s: the victim got %s RA %v, %d bytes, answers %v; want a bare REFUSED", what, dns.RcodeToString[m.Rcode], m.RecursionAvailable, n, m.Answer)
	}
}

// noRPFilter turns the kernel's reverse-path filter off for the host's
// IPv4 interfaces, so that the tests show that the server alone tells a
// forged source (the filter, on for nsnet's bridges, would drop some of
// these packets before the server sees them).
func noRPFilter(t testing.TB, host *netns.NS, links ...string) {
	t.Helper()
	for _, l := range append([]string{"all", "default"}, links...) {
		if err := host.SetSysctl("net/ipv4/conf/"+l+"/rp_filter", "0"); err != nil {
			t.Fatal(err)
		}
	}
}

// noPortGuard deletes nsnet's bridge table, which lets each container
// send from its own addresses only (and so stops forged sources at the
// bridge, before the server sees them), so that the tests show that the
// server alone tells a forged source.
func noPortGuard(t testing.TB, host *netns.NS) {
	t.Helper()
	err := host.NFTables(func(c *nftables.Conn) error {
		c.DelTable(&nftables.Table{Name: "nsnet", Family: nftables.TableFamilyBridge})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSpoof: a client is an interface and a source address, never the
// source address alone (issue 16). Each attacker sends real packets with a
// forged source to the server; the victim (the forged source) gets a bare
// REFUSED, and nothing is forwarded:
//   - a container on network A names a container of network B as its
//     source (a reflection at B, with B's names);
//   - a container on an internal network names a container of a normal
//     network (DNS exfiltration out of the internal network, the
//     CVE-2024-29018 class);
//   - a LAN neighbour, beyond the host's uplink, names a container
//     (reflection from outside);
//   - the host itself is no client unless Config.AnswerHost.
func TestSpoof(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	l := newLabOn(t, host, dnsd.Config{Upstreams: []netip.AddrPort{up.addr}})
	na, gwA := l.network("neta", "172.30.1.0/24", false)
	nb, _ := l.network("netb", "172.30.2.0/24", false)
	ni, gwI := l.network("neti", "172.30.3.0/24", true)
	noRPFilter(t, host, na.Config().Bridge, nb.Config().Bridge, ni.Config().Bridge, out.HostLink)
	a1, _ := l.container(na, nil, "a1")
	a2, addrA2 := l.container(na, nil, "a2")
	b1, addrB1 := l.container(nb, nil, "b1")
	i1, _ := l.container(ni, nil, "i1")
	noPortGuard(t, host)
	sa, si := netip.AddrPortFrom(gwA, 53), netip.AddrPortFrom(gwI, 53)

	// The honest way still works, and forwards.
	mustQuery(t, a1, "udp", sa, "a2.", dns.TypeA, dns.RcodeSuccess)
	mustQuery(t, a1, "udp", sa, "ext.example.", dns.TypeA, dns.RcodeSuccess)
	forwarded := up.udp.Load()

	vb := newVictim(t, b1, addrB1)
	for _, name := range []string{"b1.", "ext.example."} {
		spoof(t, a1, vb.addr, sa, name)
		vb.reflected(t, "a container of A as one of B, "+name)
	}

	va := newVictim(t, a2, addrA2)
	spoof(t, i1, va.addr, si, "ext.example.")
	va.reflected(t, "an internal container as one of A")

	// The neighbour knows the host as the router to the containers.
	oh, err := out.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.MustParsePrefix("172.30.0.0/16")), Gw: out.HostAddr.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a2.", "ext.example."} {
		spoof(t, out.NS, va.addr, sa, name)
		va.reflected(t, "a LAN neighbour as one of A, "+name)
	}

	if n := up.udp.Load() + up.tcp.Load(); n != forwarded {
		t.Errorf("%d forged queries forwarded", n-forwarded)
	}

	// The host (its source is the gateway's address) is a stranger.
	for _, proto := range []string{"udp", "tcp"} {
		mustQuery(t, host, proto, sa, "a2.", dns.TypeA, dns.RcodeRefused)
	}
	if n := up.udp.Load() + up.tcp.Load(); n != forwarded {
		t.Errorf("%d queries of the host forwarded", n-forwarded)
	}
}

// TestSpoof_tcp: over TCP the interface of the connection counts too: a
// LAN neighbour that reaches the gateway with an address of network A (a
// handshake needs a route back, which it has here) is not a client of A.
func TestSpoof_tcp(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	l := newLabOn(t, host, dnsd.Config{})
	na, gwA := l.network("neta", "172.30.1.0/24", false)
	noRPFilter(t, host, na.Config().Bridge, out.HostLink)
	l.container(na, nil, "a1")
	// The neighbour owns an address of A's subnet, and the host routes it
	// back over the uplink.
	fake := netip.MustParseAddr("172.30.1.200")
	oh, err := out.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	lo, _ := oh.LinkByName("lo")
	fa := &netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(fake, 32))}
	if err := oh.AddrAdd(lo, fa); err != nil {
		t.Fatal(err)
	}
	defer oh.AddrDel(lo, fa)
	if err := oh.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.MustParsePrefix("172.30.1.0/24")), Gw: out.HostAddr.Addr().AsSlice(), Src: fake.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	hh, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	up, _ := hh.LinkByName(out.HostLink)
	if err := hh.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.PrefixFrom(fake, 32)), Gw: out.Addr.AsSlice(), LinkIndex: up.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	defer hh.RouteDel(&netlink.Route{Dst: ipnet.From(netip.PrefixFrom(fake, 32)), Gw: out.Addr.AsSlice(), LinkIndex: up.Attrs().Index})
	mustQuery(t, out.NS, "tcp", netip.AddrPortFrom(gwA, 53), "a1.", dns.TypeA, dns.RcodeRefused)
}

// TestAnswerHost: with Config.AnswerHost the host is a client, by the
// gateway address it queries from.
func TestAnswerHost(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{AnswerHost: true})
	na, gwA := l.network("neta", "172.30.1.0/24", false)
	_, a1 := l.container(na, nil, "a1")
	for _, proto := range []string{"udp", "tcp"} {
		r := mustQuery(t, l.host, proto, netip.AddrPortFrom(gwA, 53), "a1.", dns.TypeA, dns.RcodeSuccess)
		if got := addrs(r); len(got) != 1 || got[0] != a1 {
			t.Errorf("a1 from the host over %s: %v, want %v", proto, got, a1)
		}
	}
}

// TestSpoof6 is TestSpoof over IPv6, which has no rp_filter sysctl: a
// container of network A posing as one of B, a container of an internal
// network posing as one of a normal network, and a LAN neighbour posing as
// a container all get a bare REFUSED reflected at their victim, and nothing
// is forwarded. (nsnet's nftables table drops such packets at the bridge
// and the uplink before they reach the server; noRPFilter6 lifts that, so
// that the server shows it tells them apart alone.)
func TestSpoof6(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	l := newLabOn(t, host, dnsd.Config{Upstreams: []netip.AddrPort{up.addr}})
	na, gwA := l.network("neta", "fd00:30:1::/64", false)
	nb, _ := l.network("netb", "fd00:30:2::/64", false)
	ni, gwI := l.network("neti", "fd00:30:3::/64", true)
	noRPFilter6(t, host)
	a1, _ := l.container(na, nil, "a1")
	a2, addrA2 := l.container(na, nil, "a2")
	b1, addrB1 := l.container(nb, nil, "b1")
	i1, _ := l.container(ni, nil, "i1")
	noPortGuard(t, host)
	sa, si := netip.AddrPortFrom(gwA, 53), netip.AddrPortFrom(gwI, 53)

	// The honest way still works, and forwards.
	mustQuery(t, a1, "udp", sa, "a2.", dns.TypeAAAA, dns.RcodeSuccess)
	mustQuery(t, a1, "udp", sa, "ext.example.", dns.TypeA, dns.RcodeSuccess)
	forwarded := up.udp.Load()

	vb := newVictim(t, b1, addrB1)
	for _, name := range []string{"b1.", "ext.example."} {
		spoof(t, a1, vb.addr, sa, name)
		vb.reflected(t, "a container of A as one of B, "+name)
	}

	va := newVictim(t, a2, addrA2)
	spoof(t, i1, va.addr, si, "ext.example.")
	va.reflected(t, "an internal container as one of A")

	// The neighbour and the host share an IPv6 subnet on the uplink, and
	// the neighbour knows the host as the router to the containers.
	hostUp, outUp := netip.MustParsePrefix("fd00:198::1/64"), netip.MustParsePrefix("fd00:198::fe/64")
	for _, e := range []struct {
		ns   *netns.NS
		link string
		addr netip.Prefix
	}{{host, out.HostLink, hostUp}, {out.NS, "eth0", outUp}} {
		h, err := e.ns.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName(e.link)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipnet.From(e.addr), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
	oh, err := out.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.MustParsePrefix("fd00:30::/32")), Gw: hostUp.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a2.", "ext.example."} {
		spoof(t, out.NS, va.addr, sa, name)
		va.reflected(t, "a LAN neighbour as one of A, "+name)
	}

	if n := up.udp.Load() + up.tcp.Load(); n != forwarded {
		t.Errorf("%d forged queries forwarded", n-forwarded)
	}
}

// noRPFilter6 is noRPFilter for IPv6: it takes out of nsnet's table the
// rules that drop packets whose source is routed out of another interface
// than the one they came in on (fib saddr . iif oif missing drop).
func noRPFilter6(t testing.TB, host *netns.NS) {
	t.Helper()
	err := host.NFTables(func(c *nftables.Conn) error {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name != "nsnet" {
				continue
			}
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return err
			}
			for _, r := range rules {
				if slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ok := e.(*expr.Fib); return ok }) {
					if err := c.DelRule(r); err != nil {
						return err
					}
				}
			}
		}
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSpoofNeighbour: a container that forges the address of a member of
// its own network (issue 16: "gets answers reflected at the victim") gets
// nothing reflected, because nsnet's bridge lets a port send from its
// endpoint's addresses only; the forged packet reaches nobody, while
// honest queries, other traffic and hairpin through a published port
// work. (One UDP reader: the server answers queries in the order they
// come, so the forged query, sent first, would be answered first.)
func TestSpoofNeighbour(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	l := newLabOn(t, host, dnsd.Config{Upstreams: []netip.AddrPort{up.addr}, UDPReaders: 1})
	na, gw := l.network("neta", "172.30.1.0/24", false)
	a1, addrA1 := l.container(na, nil, "a1")
	a2, addrA2 := l.container(na, nil, "a2")
	a3, addrA3 := l.container(na, nil, "a3")
	server := netip.AddrPortFrom(gw, 53)

	// The victim asks for a2. itself after the attacker asked for a3. in
	// its name: the first answer it gets must be its own.
	v := newVictim(t, a2, addrA2)
	spoof(t, a1, v.addr, server, "a3.")
	m := new(dns.Msg)
	m.SetQuestion("a2.", dns.TypeA)
	b, _ := m.Pack()
	if _, err := v.pc.WriteTo(b, net.UDPAddrFromAddrPort(server)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	v.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := v.pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Question[0].Name != "a2." {
		t.Errorf("the victim got an answer for %v (%v) first: the attacker's query was answered", r.Question, err)
	}

	// Nor does a forged packet reach anyone else: a neighbour, the
	// outside (routed and masqueraded by the host). The true one does.
	if err := nat.Masquerade(t.Context(), host, nat.Network{Bridge: na.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}}); err != nil {
		t.Fatal(err)
	}
	ah, err := a1.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if err := ah.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.PrefixFrom(out.Addr, 32)), Gw: gw.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []struct {
		ns   *netns.NS
		addr netip.Addr
	}{{a3, addrA3}, {out.NS, out.Addr}} {
		pc, err := dst.ns.ListenPacket("udp", netip.AddrPortFrom(dst.addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		to := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		sendRaw(t, a1, netip.AddrPortFrom(addrA2, 4000), to, "forged")
		sendRaw(t, a1, netip.AddrPortFrom(addrA1, 4000), to, "true")
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "true" {
			t.Errorf("%s got %q from %v (%v), want only the true packet", dst.addr, buf[:n], from, err)
		}
	}

	// Honest traffic: names, forwarding, and a3's published port from a3
	// itself (hairpin) and from a1.
	mustQuery(t, a1, "udp", server, "a3.", dns.TypeA, dns.RcodeSuccess)
	mustQuery(t, a1, "udp", server, "ext.example.", dns.TypeA, dns.RcodeSuccess)
	nstest.Serve(t, a3, "udp", "0.0.0.0:80")
	// Published as portmap publishes it, in nsnet's table.
	pm := []nft.Mapping{{Proto: unix.IPPROTO_UDP, HostPort: 8080, CtrAddr: addrA3, CtrPort: 80}}
	if err := nft.AddMappings(t.Context(), host, pm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nft.RemoveMappings(context.Background(), host, pm) })
	for _, c := range []*netns.NS{a3, a1} {
		if _, err := nstest.Exchange(t.Context(), c, "udp", netip.AddrPortFrom(gw, 8080).String(), "x"); err != nil {
			t.Errorf("published port: %v", err)
		}
	}
}

// sendRaw sends msg from ns with the source src, forged or not.
func sendRaw(t testing.TB, ns *netns.NS, src, dst netip.AddrPort, msg string) {
	t.Helper()
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, sockaddr(src)); err != nil {
			return err
		}
		return unix.Sendto(fd, []byte(msg), 0, sockaddr(dst))
	})
	if err != nil {
		t.Fatal(err)
	}
}
