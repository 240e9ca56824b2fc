package dnsd

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// TestRelay: an upstream's answer is relayed with the client's ID, without
// its OPT record when the client sent none (last or not), truncated to the
// client's buffer, and matched to the query by ID and question only.
func TestRelay(t *testing.T) {
	s, err := New(Config{Upstreams: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	req := new(dns.Msg)
	req.SetQuestion("Ext.Example.", dns.TypeA)
	req.Id = 42
	wire, qend, err := upstreamQuery(req)
	if err != nil {
		t.Fatal(err)
	}
	ans := func(n int, optLast bool) *dns.Msg {
		q := new(dns.Msg)
		if err := q.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		m.SetReply(q)
		m.Question[0].Name = "eXT.example."
		for i := range n {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "eXT.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(203, 0, 113, byte(i))})
		}
		txt := &dns.TXT{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"t"}}
		m.Extra = append(m.Extra, txt)
		m.SetEdns0(4096, false)
		if !optLast {
			m.Extra = []dns.RR{m.Extra[1], txt}
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		n       int
		optLast bool
		edns    bool
		udp     bool
		tc      bool
	}{
		{"no EDNS, OPT last", 1, true, false, true, false},
		{"no EDNS, OPT first", 1, false, false, true, false},
		{"EDNS", 1, true, true, true, false},
		{"no EDNS, too big", 60, true, false, true, true},
		{"no EDNS, too big, TCP", 60, true, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := req.Copy()
			if tc.edns {
				r.SetEdns0(1232, false)
			}
			b, err := ans(tc.n, tc.optLast).Pack()
			if err != nil {
				t.Fatal(err)
			}
			if !matches(wire[:qend], b) {
				t.Fatal("answer does not match its query")
			}
			out, err := s.relay(b, r, tc.udp)
			if err != nil {
				t.Fatal(err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatal(err)
			}
			if m.Id != 42 || (m.IsEdns0() != nil) != tc.edns || m.Truncated != tc.tc {
				t.Errorf("ID %d, OPT %v, TC %v; want 42, %v, %v", m.Id, m.IsEdns0() != nil, m.Truncated, tc.edns, tc.tc)
			}
			if len(m.Extra) == 0 && !tc.tc {
				t.Error("the other additional record is lost")
			}
			if size := clientSize(r, tc.udp); len(out) > size {
				t.Errorf("%d bytes for a buffer of %d", len(out), size)
			}
			if !tc.tc && len(m.Answer) != tc.n {
				t.Errorf("%d answers, want %d", len(m.Answer), tc.n)
			}
		})
	}
	// Not an answer to the query: another ID, name, type, a query.
	b, _ := ans(1, true).Pack()
	for i, f := range []func([]byte){
		func(b []byte) { b[1]++ },
		func(b []byte) { b[13]++ },
		func(b []byte) { b[qend-3]++ },
		func(b []byte) { b[2] &^= 0x80 },
	} {
		c := append([]byte(nil), b...)
		f(c)
		if matches(wire[:qend], c) {
			t.Errorf("forgery %d matches", i)
		}
	}
	if matches(wire[:qend], b[:qend-1]) {
		t.Error("a short answer matches")
	}
}
