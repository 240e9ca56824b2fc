package dnsd_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/dnsd"
)

var client = []netip.Addr{netip.MustParseAddr("172.30.1.9")}

// handler returns a server with one network and a name, no upstreams and
// no listener: only Handle is used.
func handler(t testing.TB) *dnsd.Server {
	t.Helper()
	srv, err := dnsd.New(dnsd.Config{Upstreams: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}, false)
	srv.Register("n", dnsd.Endpoint{Name: "web", Aliases: []string{"www"}, Addrs: []netip.Addr{netip.MustParseAddr("172.30.1.2"), netip.MustParseAddr("fd00::2")}})
	return srv
}

func TestHandle_malformed(t *testing.T) {
	t.Parallel()
	srv := handler(t)
	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	good, _ := q.Pack()
	two := q.Copy()
	two.Question = append(two.Question, two.Question[0])
	twoB, _ := two.Pack()
	upd := q.Copy()
	upd.Opcode = dns.OpcodeUpdate
	updB, _ := upd.Pack()
	resp := q.Copy()
	resp.Response = true
	respB, _ := resp.Pack()
	for _, tc := range []struct {
		name  string
		in    []byte
		rcode int // -1: no answer
	}{
		{"empty", nil, -1},
		{"short", []byte{1, 2, 3}, -1},
		{"header only, one question promised", good[:12], dns.RcodeFormatError},
		{"cut in the name", good[:14], dns.RcodeFormatError},
		{"a response", respB, -1},
		{"two questions", twoB, dns.RcodeFormatError},
		{"update", updB, dns.RcodeNotImplemented},
		{"good", good, dns.RcodeSuccess},
	} {
		out := srv.Handle(context.Background(), tc.in, client, true)
		if tc.rcode < 0 {
			if out != nil {
				t.Errorf("%s: an answer, want none", tc.name)
			}
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Errorf("%s: answer does not parse: %v", tc.name, err)
			continue
		}
		if m.Rcode != tc.rcode || !m.Response {
			t.Errorf("%s: %s, want %s", tc.name, dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
		}
	}
	if st := srv.Stats(); st.Malformed != 3 {
		t.Errorf("Stats.Malformed = %d, want 3", st.Malformed)
	}
}

func TestRegister_validation(t *testing.T) {
	t.Parallel()
	srv := handler(t)
	for _, ep := range []dnsd.Endpoint{
		{Name: ""}, {Name: "a.b"}, {Name: "a b"}, {Name: "ok", Aliases: []string{""}}, {Name: "ok", Addrs: []netip.Addr{{}}},
	} {
		if err := srv.Register("n", ep); err == nil {
			t.Errorf("Register(%+v) succeeded", ep)
		}
	}
	if err := srv.Register("nope", dnsd.Endpoint{Name: "x"}); err == nil {
		t.Error("Register on a missing network succeeded")
	}
	// AddNetwork is idempotent; other settings are refused.
	if err := srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}, false); err != nil {
		t.Errorf("AddNetwork again: %v", err)
	}
	if err := srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24")}, true); err == nil {
		t.Error("AddNetwork with other settings succeeded")
	}
	// Register does not change the caller's slices.
	in := []netip.Addr{netip.MustParseAddr("::ffff:172.30.1.7")}
	if err := srv.Register("n", dnsd.Endpoint{Name: "mapped", Addrs: in}); err != nil || !in[0].Is4In6() {
		t.Errorf("Register: %v, caller's address now %v", err, in[0])
	}
	for range 2 {
		if err := srv.RemoveNetwork("n"); err != nil {
			t.Error(err)
		}
	}
	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	b, _ := q.Pack()
	m := new(dns.Msg)
	m.Unpack(srv.Handle(context.Background(), b, client, true))
	if m.Rcode != dns.RcodeRefused {
		t.Errorf("after RemoveNetwork: %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
	for range 2 {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if err := srv.AddNetwork("m", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false); !errors.Is(err, dnsd.ErrClosed) {
		t.Errorf("AddNetwork after Close: %v, want ErrClosed", err)
	}
	if _, err := srv.ListenHost(context.Background(), nil, netip.MustParseAddrPort("127.0.0.1:53")); err == nil {
		t.Error("ListenHost with a nil namespace succeeded")
	}
}

// FuzzHandle: no input crashes or hangs the handler, and every answer is
// a well-formed response with the query's ID.
func FuzzHandle(f *testing.F) {
	for _, name := range []string{"web.", "WWW.nsnet.internal.", "x.example.", "2.1.30.172.in-addr.arpa.", "."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeANY, dns.TypeTXT} {
			q := new(dns.Msg)
			q.SetQuestion(name, qt)
			b, _ := q.Pack()
			f.Add(b, true)
			q.SetEdns0(4096, true)
			b, _ = q.Pack()
			f.Add(b, false)
		}
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, true) // a compression loop
	srv := handler(f)
	f.Fuzz(func(t *testing.T, in []byte, udp bool) {
		out := srv.Handle(context.Background(), in, client, udp)
		if out == nil {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if !m.Response || len(in) < 2 || m.Id != uint16(in[0])<<8|uint16(in[1]) {
			t.Fatalf("answer is no response to the query: %v", m)
		}
	})
}

// TestNames_validation: names and domains are host name labels; anything
// a zone file, a hosts file or a resolver would read otherwise is refused
// with a *ValidationError before the server changes.
func TestNames_validation(t *testing.T) {
	t.Parallel()
	srv := handler(t)
	for _, name := range []string{"*", "a,b", "a\nb", "a\x00b", "a b", "a.b", "-a", "a-", "a/b", "a\\b", "é", strings.Repeat("a", 64)} {
		var ve *dnsd.ValidationError
		if err := srv.Register("n", dnsd.Endpoint{Name: name}); !errors.As(err, &ve) {
			t.Errorf("Register(%q): %v, want a *ValidationError", name, err)
		}
		if err := srv.Register("n", dnsd.Endpoint{Name: "ok", Aliases: []string{name}}); !errors.As(err, &ve) {
			t.Errorf("Register(alias %q): %v, want a *ValidationError", name, err)
		}
	}
	for _, name := range []string{"web", "Web-2", "app_web_1", "0", strings.Repeat("a", 63)} {
		if err := srv.Register("n", dnsd.Endpoint{Name: name}); err != nil {
			t.Errorf("Register(%q): %v", name, err)
		}
	}
	for _, d := range []string{"my domain.", "a,b.", "*.x.", "x\n.", "a\x00.", "."} {
		var ve *dnsd.ValidationError
		if _, err := dnsd.New(dnsd.Config{Domain: d, Upstreams: []netip.AddrPort{}}); !errors.As(err, &ve) {
			t.Errorf("New(Domain %q): %v, want a *ValidationError", d, err)
		}
	}
	if _, err := dnsd.New(dnsd.Config{Domain: "corp.example", Upstreams: []netip.AddrPort{}}); err != nil {
		t.Errorf("New(Domain corp.example): %v", err)
	}
}

// TestUpstreams_self: an upstream that is the server itself (the
// unspecified address) is refused by New.
func TestUpstreams_self(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"0.0.0.0:53", "[::]:53"} {
		var ve *dnsd.ValidationError
		if _, err := dnsd.New(dnsd.Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort(u)}}); !errors.As(err, &ve) || ve.Field != "Config.Upstreams[0]" {
			t.Errorf("New(Upstreams %s): %v, want a *ValidationError", u, err)
		}
	}
}

// TestRefused_noRA: REFUSED says no recursion is available (RA clear), to
// strangers and to clients on internal networks; a client that may
// forward is told RA.
func TestRefused_noRA(t *testing.T) {
	t.Parallel()
	srv := handler(t)
	srv.AddNetwork("i", []netip.Prefix{netip.MustParsePrefix("172.30.2.0/24")}, true)
	ask := func(name string, from string) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		b, _ := q.Pack()
		m := new(dns.Msg)
		if err := m.Unpack(srv.Handle(context.Background(), b, []netip.Addr{netip.MustParseAddr(from)}, true)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, c := range []struct {
		name, from string
		rcode      int
		ra         bool
	}{
		{"web.", "10.9.9.9", dns.RcodeRefused, false},         // a stranger
		{"x.example.", "172.30.2.5", dns.RcodeRefused, false}, // internal: nothing forwarded
		{"web.", "172.30.2.5", dns.RcodeNameError, false},     // internal: no recursion at all
		{"web.", "172.30.1.5", dns.RcodeSuccess, true},
	} {
		m := ask(c.name, c.from)
		if m.Rcode != c.rcode || m.RecursionAvailable != c.ra {
			t.Errorf("%s from %s: %s RA %v, want %s RA %v", c.name, c.from, dns.RcodeToString[m.Rcode], m.RecursionAvailable, dns.RcodeToString[c.rcode], c.ra)
		}
	}
}

// BenchmarkHandle is the server's own work for one local answer (no
// sockets): parse, look up, answer.
//
//	go test -run '^$' -bench Handle -benchmem ./dnsd/
func BenchmarkHandle(b *testing.B) {
	srv := handler(b)
	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	in, _ := q.Pack()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if out := srv.Handle(ctx, in, client, true); out == nil {
			b.Fatal("no answer")
		}
	}
}
