package dnsd_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// lab is a sandbox host with bridge networks served by one dnsd.Server.
type lab struct {
	t     testing.TB
	host  *netns.NS
	alloc *ipam.Allocator
	srv   *dnsd.Server
}

func newLab(t testing.TB, cfg dnsd.Config) *lab {
	t.Helper()
	return newLabOn(t, nstest.Host(t), cfg)
}

// newLabOn is newLab on a host the test made (with an outside, say).
func newLabOn(t testing.TB, host *netns.NS, cfg dnsd.Config) *lab {
	t.Helper()
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NS = host
	if cfg.Upstreams == nil {
		cfg.Upstreams = []netip.AddrPort{}
	}
	srv, err := dnsd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &lab{t: t, host: host, alloc: alloc, srv: srv}
}

// network creates a bridge network, adds it to the server and listens on
// its gateway, port 53. It returns the gateway.
func (l *lab) network(name, subnet string, internal bool) (*bridge.Network, netip.Addr) {
	t := l.t
	t.Helper()
	n, gw := l.bridge(name, subnet, internal)
	ln, err := l.srv.ListenHost(context.Background(), l.host, netip.AddrPortFrom(gw, 53))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return n, gw
}

// bridge creates a bridge network and adds it to the server, without a
// listener. It returns the gateway.
func (l *lab) bridge(name, subnet string, internal bool) (*bridge.Network, netip.Addr) {
	t := l.t
	t.Helper()
	n, err := bridge.New(context.Background(), l.host, l.alloc, bridge.Config{Name: name, Internal: internal,
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(subnet)}}})
	if err != nil {
		t.Fatalf("bridge.New(%s): %v", name, err)
	}
	t.Cleanup(func() { n.Delete(context.Background(), true) })
	sub := n.Config().Subnets[0]
	if err := l.srv.AddNetwork(name, []netip.Prefix{sub.Subnet}, internal, n.Config().Bridge); err != nil {
		t.Fatal(err)
	}
	return n, sub.Gateway
}

// container attaches a new container (or ns, if given) to n and registers
// it under name with aliases. It returns the namespace and its address.
func (l *lab) container(n *bridge.Network, ns *netns.NS, name string, aliases ...string) (*netns.NS, netip.Addr) {
	t := l.t
	t.Helper()
	if ns == nil {
		ns = nstest.Container(t, l.host)
	}
	ep, err := n.Attach(context.Background(), bridge.EndpointConfig{ID: name + "-" + n.Config().Name, NS: ns})
	if err != nil {
		t.Fatalf("Attach(%s): %v", name, err)
	}
	a := ep.Addrs[0].Addr()
	if err := l.srv.Register(n.Config().Name, dnsd.Endpoint{Name: name, Aliases: aliases, Addrs: []netip.Addr{a}}); err != nil {
		t.Fatal(err)
	}
	return ns, a
}

// query asks server from ns over network ("udp" or "tcp").
func query(ns *netns.NS, network string, server netip.AddrPort, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return exchange(ns, network, server, m)
}

func exchange(ns *netns.NS, network string, server netip.AddrPort, m *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, nil, network, server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c, UDPSize: 65535}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil || r.Id == m.Id {
			return r, err
		}
	}
}

// mustQuery is query that fails the test on error and on an unexpected
// answer code.
func mustQuery(t testing.TB, ns *netns.NS, network string, server netip.AddrPort, name string, qtype uint16, rcode int) *dns.Msg {
	t.Helper()
	r, err := query(ns, network, server, name, qtype)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	if r.Rcode != rcode {
		t.Fatalf("query %s %s over %s: %s, want %s (%v)", name, dns.TypeToString[qtype], network,
			dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode], r.Answer)
	}
	return r
}

// addrs returns the A and AAAA addresses of an answer, in order.
func addrs(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A)
			out = append(out, a.Unmap())
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	return out
}

// upstream is a fake upstream resolver in the outside namespace.
type upstream struct {
	addr     netip.AddrPort
	udp, tcp atomic.Int64 // queries seen
	slow     atomic.Int64 // of them, for slow* names (never answered)
	mode     atomic.Value // "ok", "servfail", "silent"
}

var extAddr = netip.MustParseAddr("203.0.113.7")

// newUpstream serves, on ns at addr (port 0: any), ext.example. (one A
// record, 203.0.113.7), never answers names that begin with "slow", and
// big.example. (100 A records, truncated over UDP
// as a real server would: TC set, no answers); everything else NXDOMAIN.
func newUpstream(t testing.TB, ns *netns.NS, addr netip.Addr) *upstream {
	t.Helper()
	u := &upstream{}
	u.mode.Store("ok")
	pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ln, err := ns.Listen("tcp", u.addr.String())
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		_, isTCP := w.RemoteAddr().(*net.TCPAddr)
		if isTCP {
			u.tcp.Add(1)
		} else {
			u.udp.Add(1)
		}
		if strings.HasPrefix(r.Question[0].Name, "slow") {
			u.slow.Add(1)
			return // never answered
		}
		switch u.mode.Load() {
		case "silent":
			return
		case "servfail":
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			w.WriteMsg(m)
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case q.Name == "ext.example." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: extAddr.AsSlice()})
		case q.Name == "big.example." && q.Qtype == dns.TypeA:
			if !isTCP {
				m.Truncated = true
				break
			}
			for i := range 100 {
				a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{}, 2)
	ready := func() { started <- struct{}{} }
	us := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: ready}
	ts := &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: ready}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		us.Shutdown()
		ts.Shutdown()
		pc.Close()
		ln.Close()
	})
	return u
}
