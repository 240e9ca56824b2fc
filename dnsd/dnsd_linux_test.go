package dnsd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestAnswers checks every kind of local answer with real queries from
// containers to their gateways: names, aliases, case, AAAA, PTR, round
// robin, TTL, scoping between networks, and UDP and TCP alike.
func TestAnswers(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{TTL: 42 * time.Second})
	na, gwA := l.network("neta", "172.30.1.0/24", false)
	nb, gwB := l.network("netb", "172.30.2.0/24", false)
	sa, sb := netip.AddrPortFrom(gwA, 53), netip.AddrPortFrom(gwB, 53)
	c1, a1 := l.container(na, nil, "c1", "db")
	_, a2 := l.container(na, nil, "c2", "web")
	_, a3 := l.container(na, nil, "c3", "web")
	c4, a4 := l.container(nb, nil, "c4")
	// c5 is on both networks, with an address on each.
	c5, a5a := l.container(na, nil, "c5")
	_, a5b := l.container(nb, c5, "c5")
	// An IPv6 address on a name (the server serves whatever is registered).
	v6 := netip.MustParseAddr("fd00:30::5")
	if err := l.srv.Register("neta", dnsd.Endpoint{Name: "six", Addrs: []netip.Addr{v6, netip.MustParseAddr("172.30.1.200")}}); err != nil {
		t.Fatal(err)
	}

	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			check := func(name string, qtype uint16, want ...netip.Addr) {
				t.Helper()
				r := mustQuery(t, c1, proto, sa, name, qtype, dns.RcodeSuccess)
				got := addrs(r)
				slices.SortFunc(got, netip.Addr.Compare)
				slices.SortFunc(want, netip.Addr.Compare)
				if !slices.Equal(got, want) {
					t.Errorf("%s %s: %v, want %v", name, dns.TypeToString[qtype], got, want)
				}
				for _, rr := range r.Answer {
					if rr.Header().Ttl != 42 {
						t.Errorf("%s: TTL %d, want 42", name, rr.Header().Ttl)
					}
				}
				if len(want) > 0 && !r.Authoritative {
					t.Errorf("%s: local answer not authoritative", name)
				}
			}
			check("c2.", dns.TypeA, a2)
			check("C2.", dns.TypeA, a2)                // case-insensitive
			check("c2.NSNET.Internal.", dns.TypeA, a2) // under the domain
			check("db.", dns.TypeA, a1)                // alias
			check("web.", dns.TypeA, a2, a3)           // shared alias: all
			check("six.", dns.TypeAAAA, v6)            // AAAA
			check("six.", dns.TypeA, netip.MustParseAddr("172.30.1.200"))
			check("c2.", dns.TypeAAAA)   // NODATA, not NXDOMAIN
			check("c5.", dns.TypeA, a5a) // c5's address on neta
			// PTR of a registered address.
			rev, _ := dns.ReverseAddr(a2.String())
			r := mustQuery(t, c1, proto, sa, rev, dns.TypePTR, dns.RcodeSuccess)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "c2.nsnet.internal." {
				t.Errorf("PTR %s: %v", rev, r.Answer)
			}
			rev6, _ := dns.ReverseAddr(v6.String())
			r = mustQuery(t, c1, proto, sa, rev6, dns.TypePTR, dns.RcodeSuccess)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "six.nsnet.internal." {
				t.Errorf("PTR %s: %v", rev6, r.Answer)
			}
			// An unregistered address of the network: NXDOMAIN, not forwarded.
			rev, _ = dns.ReverseAddr("172.30.1.250")
			mustQuery(t, c1, proto, sa, rev, dns.TypePTR, dns.RcodeNameError)
			// Names of another network do not resolve: NXDOMAIN.
			mustQuery(t, c1, proto, sa, "c4.", dns.TypeA, dns.RcodeNameError)
			rev, _ = dns.ReverseAddr(a4.String())
			mustQuery(t, c1, proto, sa, rev, dns.TypePTR, dns.RcodeNameError)
			mustQuery(t, c4, proto, sb, "c1.", dns.TypeA, dns.RcodeNameError)
			mustQuery(t, c4, proto, sb, "nothere.nsnet.internal.", dns.TypeA, dns.RcodeNameError)
			// The other way, and the name on two networks from netb.
			if got := addrs(mustQuery(t, c4, proto, sb, "c5.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{a5b}) {
				t.Errorf("c5 from netb: %v, want %v", got, a5b)
			}
		})
	}

	// Round robin: the first address of a shared alias rotates.
	first := map[netip.Addr]bool{}
	for range 4 {
		first[addrs(mustQuery(t, c1, "udp", sa, "web.", dns.TypeA, dns.RcodeSuccess))[0]] = true
	}
	if len(first) != 2 {
		t.Errorf("round robin: first addresses %v, want both of %v %v", first, a2, a3)
	}

	// Unregister takes effect at once; registering again too.
	if err := l.srv.Unregister("neta", "c2"); err != nil {
		t.Fatal(err)
	}
	mustQuery(t, c1, "udp", sa, "c2.", dns.TypeA, dns.RcodeNameError)
	if got := addrs(mustQuery(t, c1, "udp", sa, "web.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{a3}) {
		t.Errorf("web after c2 left: %v, want %v", got, a3)
	}
	for range 2 { // idempotent
		if err := l.srv.Unregister("neta", "c2"); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.srv.Register("neta", dnsd.Endpoint{Name: "c2", Addrs: []netip.Addr{a2}}); err != nil {
		t.Fatal(err)
	}
	mustQuery(t, c1, "udp", sa, "c2.", dns.TypeA, dns.RcodeSuccess)

	st := l.srv.Stats()
	if st.ByType["A"] == 0 || st.ByType["PTR"] == 0 || st.ByRcode["NXDOMAIN"] == 0 || st.ByRcode["NOERROR"] == 0 {
		t.Errorf("Stats: %+v", st)
	}
}

// TestRefused: a client on no network of the server gets REFUSED (for
// local and other names alike), and nothing is forwarded for it.
func TestRefused(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	out := nstest.NewOutside(t, l.host)
	up := newUpstream(t, out.NS, out.Addr)
	srv, err := dnsd.New(dnsd.Config{NS: l.host, Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("neta", []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}, false)
	srv.Register("neta", dnsd.Endpoint{Name: "c1", Addrs: []netip.Addr{netip.MustParseAddr("172.30.1.2")}})
	// A listener on the host's uplink: the outside can reach it.
	ln, err := srv.ListenHost(t.Context(), l.host, netip.AddrPortFrom(out.HostAddr.Addr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, proto := range []string{"udp", "tcp"} {
		for _, name := range []string{"c1.", "ext.example."} {
			mustQuery(t, out.NS, proto, ln.Addr(), name, dns.TypeA, dns.RcodeRefused)
		}
	}
	if n := up.udp.Load() + up.tcp.Load(); n != 0 {
		t.Errorf("the upstream saw %d queries for an outside client", n)
	}
	if st := srv.Stats(); st.ByRcode["REFUSED"] != 4 {
		t.Errorf("Stats.ByRcode: %v, want 4 REFUSED", st.ByRcode)
	}
}

// TestForward: names not served locally go to the upstreams, from the
// host namespace; a truncated UDP answer is retried over TCP; a failing
// upstream is skipped; SERVFAIL when all fail; never for the domain nor
// for internal networks.
//
// Nothing here races a timer against an answer: the upstreams that fail
// fail at once (an ICMP port unreachable, which the outside is told never
// to rate-limit, and SERVFAIL), those that answer have a Timeout far above
// any scheduling delay, and the one timeout path (a silent upstream, which
// never answers) is checked on its own.
func TestForward(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	// ICMP errors are rate-limited per peer and, for the whole machine, by
	// one global budget that parallel tests share: without a limit, the
	// closed port below always fails at once.
	if err := out.NS.SetSysctl("net/ipv4/icmp_ratemask", "0"); err != nil {
		t.Fatal(err)
	}
	good := newUpstream(t, out.NS, out.Addr)
	silent := newUpstream(t, out.NS, out.Addr)
	silent.mode.Store("silent")
	bad := newUpstream(t, out.NS, out.Addr)
	bad.mode.Store("servfail")
	// A port nobody listens on: ICMP port unreachable.
	closed := netip.AddrPortFrom(out.Addr, 9)

	l := newLabOn(t, host, dnsd.Config{Timeout: 10 * time.Second,
		Upstreams: []netip.AddrPort{closed, bad.addr, good.addr}})
	srv := l.srv
	na, gwA := l.network("neta", "172.30.1.0/24", false)
	ni, gwI := l.network("neti", "172.30.3.0/24", true)
	c1, _ := l.container(na, nil, "c1")
	ci, _ := l.container(ni, nil, "ci")
	sa, si := netip.AddrPortFrom(gwA, 53), netip.AddrPortFrom(gwI, 53)

	r := mustQuery(t, c1, "udp", sa, "ext.example.", dns.TypeA, dns.RcodeSuccess)
	if got := addrs(r); !slices.Equal(got, []netip.Addr{extAddr}) {
		t.Fatalf("ext.example.: %v, want %v", got, extAddr)
	}
	if bad.udp.Load() != 1 || good.udp.Load() != 1 {
		t.Errorf("upstream queries: servfail %d, good %d; want 1 each", bad.udp.Load(), good.udp.Load())
	}
	st := srv.Stats()
	if st.Forwarded != 1 || st.UpstreamErrors != 2 {
		t.Errorf("Stats: Forwarded %d UpstreamErrors %d, want 1 and 2", st.Forwarded, st.UpstreamErrors)
	}
	mustQuery(t, c1, "udp", sa, "nope.example.", dns.TypeA, dns.RcodeNameError) // upstream's NXDOMAIN

	// TCP fallback: the upstream truncates over UDP.
	tcp0 := good.tcp.Load()
	r = mustQuery(t, c1, "tcp", sa, "big.example.", dns.TypeA, dns.RcodeSuccess)
	if len(r.Answer) != 100 || good.tcp.Load() != tcp0+1 {
		t.Errorf("big.example. over TCP: %d answers, upstream TCP queries %d; want 100 and 1", len(r.Answer), good.tcp.Load()-tcp0)
	}
	// Asked over UDP, the client gets a proper truncated answer.
	r = mustQuery(t, c1, "udp", sa, "big.example.", dns.TypeA, dns.RcodeSuccess)
	if !r.Truncated {
		t.Errorf("big.example. over UDP: not truncated, %d answers", len(r.Answer))
	}

	// Never forwarded: the domain, single labels, internal networks.
	before := good.udp.Load() + bad.udp.Load()
	mustQuery(t, c1, "udp", sa, "ext.nsnet.internal.", dns.TypeA, dns.RcodeNameError)
	mustQuery(t, c1, "udp", sa, "ext.", dns.TypeA, dns.RcodeNameError)
	mustQuery(t, ci, "udp", si, "ext.example.", dns.TypeA, dns.RcodeRefused)
	mustQuery(t, ci, "udp", si, "ci.", dns.TypeA, dns.RcodeSuccess) // its names still resolve
	if after := good.udp.Load() + bad.udp.Load(); after != before {
		t.Errorf("%d queries forwarded that must not be", after-before)
	}

	// All upstreams fail: SERVFAIL.
	good.mode.Store("servfail")
	mustQuery(t, c1, "udp", sa, "ext.example.", dns.TypeA, dns.RcodeServerFailure)
	if st := srv.Stats(); st.ForwardFailed != 1 {
		t.Errorf("Stats.ForwardFailed = %d, want 1", st.ForwardFailed)
	}

	// A silent upstream is given up after Timeout and the next one asked;
	// when every upstream is silent, SERVFAIL. The answering upstream has
	// the whole Timeout again, far above any delay.
	good.mode.Store("ok")
	srv2, err := dnsd.New(dnsd.Config{NS: host, Timeout: 2 * time.Second,
		Upstreams: []netip.AddrPort{silent.addr, good.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	srv2.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	ask := func(name string) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		p, _ := q.Pack()
		r := new(dns.Msg)
		if err := r.Unpack(srv2.Handle(t.Context(), p, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, true)); err != nil {
			t.Fatal(err)
		}
		return r
	}
	t0 := time.Now()
	if r := ask("ext.example."); r.Rcode != dns.RcodeSuccess || !slices.Equal(addrs(r), []netip.Addr{extAddr}) {
		t.Errorf("past a silent upstream: %s %v", dns.RcodeToString[r.Rcode], addrs(r))
	}
	if d := time.Since(t0); d < 2*time.Second {
		t.Errorf("the silent upstream was given up after %v, before Timeout", d)
	}
	if silent.udp.Load() != 1 {
		t.Errorf("the silent upstream saw %d queries, want 1", silent.udp.Load())
	}
	if st := srv2.Stats(); st.Forwarded != 1 || st.UpstreamErrors != 1 {
		t.Errorf("Stats: Forwarded %d UpstreamErrors %d, want 1 and 1", st.Forwarded, st.UpstreamErrors)
	}
}

// TestForwardSpoof: an answer from the upstream's address with the wrong
// ID or question, or empty, is not taken (nor does it end the wait); the
// real one is.
func TestForwardSpoof(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	pc, err := out.NS.ListenPacket("udp", netip.AddrPortFrom(out.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ids := make(chan uint16, 4)
	go func() {
		b := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(b[:n]) != nil {
				continue
			}
			ids <- q.Id
			// First an empty datagram, a forged answer (wrong ID), then
			// one for another name, then the real one.
			pc.WriteTo(nil, from)
			for i, name := range []string{q.Question[0].Name, "other.example.", q.Question[0].Name} {
				m := new(dns.Msg)
				m.SetReply(q)
				m.Question[0].Name = name
				if i == 0 {
					m.Id = q.Id + 1
				}
				a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: a.AsSlice()}}
				p, _ := m.Pack()
				pc.WriteTo(p, from)
			}
		}
	}()
	srv, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	var got []uint16
	for range 3 {
		q := new(dns.Msg)
		q.SetQuestion("x.example.", dns.TypeA)
		q.Id = 7
		p, _ := q.Pack()
		b := srv.Handle(t.Context(), p, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, true)
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if a := addrs(r); r.Id != 7 || len(a) != 1 || a[0] != netip.MustParseAddr("203.0.113.2") {
			t.Fatalf("answer %v id %d, want 203.0.113.2 id 7", a, r.Id)
		}
		got = append(got, <-ids)
	}
	if got[0] == got[1] && got[1] == got[2] {
		t.Errorf("forwarded IDs %v: not fresh", got)
	}
	if st := srv.Stats(); st.Mismatched != 9 {
		t.Errorf("Stats.Mismatched = %d, want 9", st.Mismatched)
	}
}

// TestListenContainer: Docker style, 127.0.0.11:53 in the container's
// namespace; scoped by the container's addresses; forwarding from the host.
func TestListenContainer(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	l := newLabOn(t, host, dnsd.Config{Upstreams: []netip.AddrPort{up.addr}})
	srv := l.srv
	na, _ := l.network("neta", "172.30.1.0/24", false)
	nb, _ := l.network("netb", "172.30.2.0/24", false)
	c1, a1 := l.container(na, nil, "c1")
	_, a2 := l.container(na, nil, "c2")
	l.container(nb, nil, "c3")
	ln, err := srv.ListenContainer(t.Context(), c1, []netip.Addr{a1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := netip.MustParseAddrPort("127.0.0.11:53")
	if ln.Addr() != s {
		t.Errorf("Addr() = %v, want %v", ln.Addr(), s)
	}
	for _, proto := range []string{"udp", "tcp"} {
		if got := addrs(mustQuery(t, c1, proto, s, "c2.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{a2}) {
			t.Errorf("c2: %v, want %v", got, a2)
		}
		mustQuery(t, c1, proto, s, "c3.", dns.TypeA, dns.RcodeNameError)
		if got := addrs(mustQuery(t, c1, proto, s, "ext.example.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{extAddr}) {
			t.Errorf("ext.example.: %v", got)
		}
	}
	ln.Close()
	ln.Close()
	if _, err := query(c1, "udp", s, "c2.", dns.TypeA); err == nil {
		t.Error("an answer after Close")
	}
}

// TestPortTaken: port 53 of the gateway is taken (a dnsmasq); the server
// listens on another port and clients still ask port 53, through a
// redirect that goes with the listener.
func TestPortTaken(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	na, gw := l.bridge("neta", "172.30.1.0/24", false)
	c1, _ := l.container(na, nil, "c1")
	_, a2 := l.container(na, nil, "c2")
	// The squatter: a UDP socket on gw:53 that answers everything NOTIMP,
	// and a TCP one that never answers. After the listener is gone, the
	// squatter's answer shows that the redirect went with it, at once and
	// without waiting out a timeout.
	pc, err := l.host.ListenPacket("udp", netip.AddrPortFrom(gw, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(b[:n]) != nil {
				continue
			}
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeNotImplemented)
			p, _ := m.Pack()
			pc.WriteTo(p, from)
		}
	}()
	tl, err := l.host.Listen("tcp", netip.AddrPortFrom(gw, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	if ln, err := l.srv.ListenHost(t.Context(), l.host, netip.AddrPortFrom(gw, 53)); err == nil {
		ln.Close()
		t.Fatal("ListenHost on a taken port 53 succeeded")
	}
	ln, err := l.srv.ListenHost(t.Context(), l.host, netip.AddrPortFrom(gw, 0))
	if err != nil {
		t.Fatal(err)
	}
	if p := ln.Addr().Port(); p == 53 || p == 0 {
		t.Fatalf("Addr() = %v", ln.Addr())
	}
	s := netip.AddrPortFrom(gw, 53)
	for _, proto := range []string{"udp", "tcp"} {
		if got := addrs(mustQuery(t, c1, proto, s, "c2.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{a2}) {
			t.Errorf("c2 over %s via the redirect: %v, want %v", proto, got, a2)
		}
	}
	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The redirect went with the listener (the host's leak check also
	// finds a table left behind): port 53 is the squatter's again.
	mustQuery(t, c1, "udp", s, "c2.", dns.TypeA, dns.RcodeNotImplemented)
}

// TestTCPLimits: idle, silent and half-closed TCP clients are dropped
// after TCPIdle, connections past MaxTCPConns are closed at once, and the
// server keeps answering meanwhile.
func TestTCPLimits(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{MaxTCPConns: 3, TCPIdle: 300 * time.Millisecond})
	na, gw := l.network("neta", "172.30.1.0/24", false)
	c1, _ := l.container(na, nil, "c1")
	s := netip.AddrPortFrom(gw, 53)
	var conns []net.Conn
	for range 3 {
		c, err := c1.Dial(t.Context(), nil, "tcp", s.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// One sends half a length prefix, one half a message, one nothing.
	conns[0].Write([]byte{0})
	conns[1].Write([]byte{0, 40, 1, 2, 3})
	time.Sleep(50 * time.Millisecond)
	// A fourth is over the cap: closed at once.
	c, err := c1.Dial(t.Context(), nil, "tcp", s.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a connection over the cap: %v, want closed", err)
	}
	c.Close()
	// UDP still answers.
	mustQuery(t, c1, "udp", s, "c1.", dns.TypeA, dns.RcodeSuccess)
	// The stalled connections are closed after TCPIdle.
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("stalled connection %d: %v, want closed by the server", i, err)
		}
	}
	// Then TCP answers again; a half-closed client gets its answer and the
	// connection is closed.
	mustQuery(t, c1, "tcp", s, "c1.", dns.TypeA, dns.RcodeSuccess)
	hc, err := c1.Dial(t.Context(), nil, "tcp", s.String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	m := new(dns.Msg)
	m.SetQuestion("c1.", dns.TypeA)
	co := &dns.Conn{Conn: hc}
	co.WriteMsg(m)
	hc.(*net.TCPConn).CloseWrite()
	hc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if r, err := co.ReadMsg(); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("half-closed client: %v %v", r, err)
	}
	if _, err := co.ReadMsg(); err == nil || isTimeout(err) {
		t.Errorf("half-closed client: connection still open: %v", err)
	}
	if st := l.srv.Stats(); st.TCPRejected != 1 {
		t.Errorf("Stats.TCPRejected = %d, want 1", st.TCPRejected)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestTruncate: a UDP answer larger than the client's buffer (512 without
// EDNS) is truncated with TC set; over TCP it is whole; with EDNS 4096 more
// fits.
func TestTruncate(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	na, gw := l.network("neta", "172.30.0.0/16", false)
	c1, _ := l.container(na, nil, "c1")
	for i := range 100 {
		a := netip.AddrFrom4([4]byte{172, 30, 100, byte(i + 1)})
		if err := l.srv.Register("neta", dnsd.Endpoint{Name: fmt.Sprintf("m%d", i), Aliases: []string{"many"}, Addrs: []netip.Addr{a}}); err != nil {
			t.Fatal(err)
		}
	}
	s := netip.AddrPortFrom(gw, 53)
	r := mustQuery(t, c1, "udp", s, "many.", dns.TypeA, dns.RcodeSuccess)
	r.Compress = true
	if !r.Truncated || r.Len() > 512 {
		t.Errorf("UDP without EDNS: TC %v, %d bytes, %d answers", r.Truncated, r.Len(), len(r.Answer))
	}
	m := new(dns.Msg)
	m.SetQuestion("many.", dns.TypeA)
	m.SetEdns0(4096, false)
	r, err := exchange(c1, "udp", s, m)
	if err != nil || r.Truncated || len(r.Answer) != 100 {
		t.Errorf("UDP with EDNS 4096: %v, TC %v, %d answers", err, r != nil && r.Truncated, len(r.Answer))
	}
	r = mustQuery(t, c1, "tcp", s, "many.", dns.TypeA, dns.RcodeSuccess)
	if r.Truncated || len(r.Answer) != 100 {
		t.Errorf("TCP: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	if st := l.srv.Stats(); st.Truncated != 1 {
		t.Errorf("Stats.Truncated = %d, want 1", st.Truncated)
	}
}

// TestConcurrentRegister: Register and Unregister while clients query;
// run with -race. A name never unregistered always answers.
func TestConcurrentRegister(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	na, gw := l.network("neta", "172.30.0.0/16", false)
	c1, a1 := l.container(na, nil, "c1")
	s := netip.AddrPortFrom(gw, 53)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && i < 2000; i++ {
				name := fmt.Sprintf("x%d-%d", w, i%50)
				a := netip.AddrFrom4([4]byte{172, 30, byte(w + 1), byte(i%50 + 1)})
				l.srv.Register("neta", dnsd.Endpoint{Name: name, Aliases: []string{"churn"}, Addrs: []netip.Addr{a}})
				if i%3 == 0 {
					l.srv.Unregister("neta", name)
				}
			}
		})
	}
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && i < 300; i++ {
				name := "c1."
				if i%2 == 1 {
					name = "churn."
				}
				r, err := query(c1, "udp", s, name, dns.TypeA)
				if err != nil {
					errs <- err
					return
				}
				if name == "c1." && (r.Rcode != dns.RcodeSuccess || !slices.Equal(addrs(r), []netip.Addr{a1})) {
					errs <- fmt.Errorf("c1 during churn: %v %v", dns.RcodeToString[r.Rcode], addrs(r))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMaxForwards: past MaxForwards queries in flight, a query that would
// be forwarded gets SERVFAIL at once; local names still answer.
func TestMaxForwards(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	up.mode.Store("silent")
	srv, err := dnsd.New(dnsd.Config{NS: host, MaxForwards: 1, Timeout: time.Second, Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	srv.Register("n", dnsd.Endpoint{Name: "local", Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}})
	ask := func(name string) (*dns.Msg, time.Duration) {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		p, _ := q.Pack()
		t0 := time.Now()
		b := srv.Handle(t.Context(), p, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, true)
		r := new(dns.Msg)
		r.Unpack(b)
		return r, time.Since(t0)
	}
	done := make(chan int)
	go func() { r, _ := ask("ext.example."); done <- r.Rcode }()
	for up.udp.Load() == 0 { // the first is in flight
		time.Sleep(5 * time.Millisecond)
	}
	r, d := ask("ext.example.")
	if r.Rcode != dns.RcodeServerFailure || d > 500*time.Millisecond {
		t.Errorf("over the limit: %s after %v, want SERVFAIL at once", dns.RcodeToString[r.Rcode], d)
	}
	if r, _ := ask("local."); r.Rcode != dns.RcodeSuccess {
		t.Errorf("local name while forwards are busy: %s", dns.RcodeToString[r.Rcode])
	}
	if rc := <-done; rc != dns.RcodeServerFailure {
		t.Errorf("the silent upstream's query: %s, want SERVFAIL", dns.RcodeToString[rc])
	}
	if st := srv.Stats(); st.ForwardBusy != 1 || up.udp.Load() != 1 {
		t.Errorf("ForwardBusy %d, upstream queries %d; want 1 and 1", st.ForwardBusy, up.udp.Load())
	}
}

// TestListenContainer_portTaken: 127.0.0.11:53 is taken in the container;
// the server listens on another port there and redirects 53 to it.
func TestListenContainer_portTaken(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	na, _ := l.bridge("neta", "172.30.1.0/24", false)
	c1, a1 := l.container(na, nil, "c1")
	s := netip.MustParseAddrPort("127.0.0.11:53")
	pc, err := c1.ListenPacket("udp", s.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln, err := l.srv.ListenContainer(t.Context(), c1, []netip.Addr{a1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().Port() == 53 {
		t.Fatalf("Addr() = %v on a taken port", ln.Addr())
	}
	for _, proto := range []string{"udp", "tcp"} {
		if got := addrs(mustQuery(t, c1, proto, s, "c1.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{a1}) {
			t.Errorf("c1 over %s: %v", proto, got)
		}
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestForward_noStall: queries waiting on a silent upstream, more than
// there are UDP readers, do not hold up local answers.
func TestForward_noStall(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	up.mode.Store("silent")
	l := newLabOn(t, host, dnsd.Config{UDPReaders: 2, Timeout: 3 * time.Second, Upstreams: []netip.AddrPort{up.addr}})
	na, gw := l.network("neta", "172.30.1.0/24", false)
	c1, a1 := l.container(na, nil, "c1")
	s := netip.AddrPortFrom(gw, 53)
	for range 6 {
		c, err := c1.Dial(t.Context(), nil, "udp", s.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m := new(dns.Msg)
		m.SetQuestion("slow.example.", dns.TypeA)
		(&dns.Conn{Conn: c}).WriteMsg(m)
	}
	for up.udp.Load() < 6 {
		time.Sleep(5 * time.Millisecond)
	}
	// The client gives up well before the upstream's timeout.
	c, err := c1.Dial(t.Context(), nil, "udp", s.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion("c1.", dns.TypeA)
	co.WriteMsg(m)
	r, err := co.ReadMsg()
	if err != nil || !slices.Equal(addrs(r), []netip.Addr{a1}) {
		t.Fatalf("a local name while forwards wait: %v %v", r, err)
	}
}

// TestListen_validation: a cancelled context and a listener that an
// upstream is (the server would forward to itself) are refused before any
// socket or rule is made.
func TestListen_validation(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	gw := netip.MustParseAddr("127.0.0.1")
	srv, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{netip.AddrPortFrom(gw, 53)}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if ln, err := srv.ListenHost(ctx, host, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 0)); !errors.Is(err, context.Canceled) {
		t.Errorf("ListenHost with a cancelled context: %v, want context.Canceled", err)
		if ln != nil {
			ln.Close()
		}
	}
	ctr := nstest.Container(t, host)
	if ln, err := srv.ListenContainer(ctx, ctr, []netip.Addr{netip.MustParseAddr("10.0.0.2")}); !errors.Is(err, context.Canceled) {
		t.Errorf("ListenContainer with a cancelled context: %v, want context.Canceled", err)
		if ln != nil {
			ln.Close()
		}
	}
	// The upstream's own address, on its port or on another (redirected
	// from 53): a loop.
	for _, p := range []uint16{53, 0} {
		var ve *dnsd.ValidationError
		if ln, err := srv.ListenHost(t.Context(), host, netip.AddrPortFrom(gw, p)); !errors.As(err, &ve) {
			t.Errorf("ListenHost on the upstream %s port %d: %v, want a *ValidationError", gw, p, err)
			if ln != nil {
				ln.Close()
			}
		}
	}
	// In another namespace the same address is another host: no loop.
	ln, err := srv.ListenContainer(t.Context(), ctr, []netip.Addr{netip.MustParseAddr("10.0.0.2")})
	if err != nil {
		t.Fatalf("ListenContainer: %v", err)
	}
	ln.Close()
}

// TestMaxClientForwards: one client's slow names take only its own share
// of the forward slots (MaxClientForwards); another client's names are
// still forwarded. With one cap for all, the second client would get
// SERVFAIL at once.
func TestMaxClientForwards(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	l := newLabOn(t, host, dnsd.Config{MaxForwards: 3, MaxClientForwards: 2, Timeout: 10 * time.Second,
		Upstreams: []netip.AddrPort{up.addr}})
	na, gw := l.network("neta", "172.30.1.0/24", false)
	x, _ := l.container(na, nil, "x")
	y, _ := l.container(na, nil, "y")
	s := netip.AddrPortFrom(gw, 53)
	// x asks three slow names: two wait on the upstream, the third is
	// over x's share.
	var conns []*dns.Conn
	for i := range 3 {
		c, err := x.Dial(t.Context(), nil, "udp", s.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		co := &dns.Conn{Conn: c}
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("slow%d.example.", i), dns.TypeA)
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, co)
		if i < 2 {
			for up.slow.Load() < int64(i+1) { // in flight
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	conns[2].SetReadDeadline(time.Now().Add(5 * time.Second))
	if r, err := conns[2].ReadMsg(); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("x's third slow name: %v %v, want SERVFAIL at once", r, err)
	}
	// y's names are forwarded meanwhile.
	if got := addrs(mustQuery(t, y, "udp", s, "ext.example.", dns.TypeA, dns.RcodeSuccess)); !slices.Equal(got, []netip.Addr{extAddr}) {
		t.Errorf("y's name while x's wait: %v", got)
	}
	if st := l.srv.Stats(); st.ForwardBusy != 1 || up.slow.Load() != 2 {
		t.Errorf("ForwardBusy %d, slow queries upstream %d; want 1 and 2", st.ForwardBusy, up.slow.Load())
	}
}
