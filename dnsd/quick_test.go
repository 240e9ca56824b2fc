package dnsd

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzQuick: whatever parseQuick and quickReply answer, handleSlow (by
// unpacking and packing with miekg/dns) answers the same bytes: a local
// answer, or the query for upstreams and the SERVFAIL answer to send if
// forwarding fails (a turn of the round robin taken back in between).
func FuzzQuick(f *testing.F) {
	s, err := New(Config{Upstreams: []netip.AddrPort{}, TTL: 77 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	s.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}, false)
	s.AddNetwork("i", []netip.Prefix{netip.MustParsePrefix("172.30.2.0/24")}, true)
	s.Register("n", Endpoint{Name: "web", Aliases: []string{"www"}, Addrs: []netip.Addr{netip.MustParseAddr("172.30.1.2"), netip.MustParseAddr("fd00::2")}})
	s.Register("n", Endpoint{Name: "Six", Addrs: []netip.Addr{netip.MustParseAddr("fd00::6")}})
	s.Register("n", Endpoint{Name: "no-addr"})
	s.Register("i", Endpoint{Name: "inner", Addrs: []netip.Addr{netip.MustParseAddr("172.30.2.3")}})
	var many []netip.Addr
	for i := range 40 {
		many = append(many, netip.AddrFrom4([4]byte{172, 30, 1, byte(100 + i)}))
	}
	s.Register("n", Endpoint{Name: "many", Addrs: many})
	clients := [][]netip.Addr{
		{netip.MustParseAddr("172.30.1.9")},
		{netip.MustParseAddr("172.30.2.9")},
		{netip.MustParseAddr("10.9.9.9")},
		{netip.MustParseAddr("172.30.2.9"), netip.MustParseAddr("172.30.1.9")},
	}
	for _, name := range []string{"web.", "WEB.nsnet.internal.", "www.", "six.", "no-addr.", "inner.", "many.",
		"ext.example.", "Ext.EXAMPLE.", "a_b-c.example.", ".", "com.", "x.nsnet.internal.",
		"nsnet.internal.", "xnsnet.internal.", "a.b.NSNET.internal."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypePTR, dns.TypeANY} {
			q := new(dns.Msg)
			q.SetQuestion(name, qt)
			b, _ := q.Pack()
			f.Add(b, uint8(0))
			q.CheckingDisabled, q.RecursionDesired, q.AuthenticatedData = true, false, true
			b, _ = q.Pack()
			f.Add(b, uint8(3))
			q.SetEdns0(1232, true)
			b, _ = q.Pack()
			f.Add(b, uint8(1))
			q.Extra[0].(*dns.OPT).SetUDPSize(100)
			b, _ = q.Pack()
			f.Add(b, uint8(0))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, c uint8) {
		w := who{addrs: clients[int(c)%len(clients)]}
		var low [256]byte
		q, ok := parseQuick(b, low[:0])
		if !ok {
			return
		}
		fast := s.quickReply(b, q, w)
		if fast == nil {
			return
		}
		if fast.out != nil {
			// Take back the turn of the round robin that quickReply took.
			for _, n := range s.clientNets(w) {
				if e := n.names[string(q.low)]; e != nil {
					if len(e.addrs) > 0 {
						e.rr.Add(^uint32(0))
					}
					break
				}
			}
		}
		slow := s.handleSlow(b, w)
		if slow == nil {
			t.Fatalf("quick answers %x, slow drops it", b)
		}
		if fast.out != nil {
			if slow.fwd {
				t.Fatalf("quick answers %x, slow forwards it", b)
			}
			var out []byte
			s.send(slow, true, time.Now(), func(o []byte) { out = o })
			if !bytes.Equal(fast.out, out) {
				t.Fatalf("query %x: quick answer\n%x, slow\n%x", b, fast.out, out)
			}
			return
		}
		if !fast.fwd || !slow.fwd {
			t.Fatalf("query %x: quick forwards %v, slow %v", b, fast.fwd, slow.fwd)
		}
		wire, qend, err := upstreamQuery(slow.req)
		if err != nil || !bytes.Equal(wire, fast.wire) || qend != fast.qend {
			t.Fatalf("query %x: quick upstream query %x (%d), slow %x (%d, %v)", b, fast.wire, fast.qend, wire, qend, err)
		}
		for _, r := range []*reply{fast, slow} {
			r.m.Rcode = dns.RcodeServerFailure
		}
		var fo, so []byte
		s.send(fast, true, time.Now(), func(o []byte) { fo = o })
		s.send(slow, true, time.Now(), func(o []byte) { so = o })
		if !bytes.Equal(fo, so) {
			t.Fatalf("query %x: quick SERVFAIL %x, slow %x", b, fo, so)
		}
		if clientSize(fast.req, true) != clientSize(slow.req, true) || (fast.req.IsEdns0() == nil) != (slow.req.IsEdns0() == nil) {
			t.Fatalf("query %x: quick and slow differ on the client's EDNS", b)
		}
	})
}
