package dnsd_test

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/dnsd"
)

// TestGC registers names on two networks as an orchestrator did before it
// crashed, and collects with the live set that the restarted orchestrator
// has: real queries from the containers then find only the live names;
// an alias of live and gone endpoints answers with the live addresses
// only; the PTR records of the gone are gone, and an address that a gone
// endpoint and a live one both held points at the live one; a network
// that is not live is gone with its names (its clients are REFUSED).
func TestGC(t *testing.T) {
	t.Parallel()
	l := newLab(t, dnsd.Config{})
	na, gwA := l.network("neta", "172.30.41.0/24", false)
	nb, gwB := l.network("netb", "172.30.42.0/24", false)
	nc, gwC := l.network("netc", "172.30.43.0/24", false)
	sa, sb, sc := netip.AddrPortFrom(gwA, 53), netip.AddrPortFrom(gwB, 53), netip.AddrPortFrom(gwC, 53)
	c1, a1 := l.container(na, nil, "c1", "web")
	_, a2 := l.container(na, nil, "gone2", "web")
	_, a3 := l.container(na, nil, "gone3")
	c4, a4 := l.container(nb, nil, "c4")
	_, a5 := l.container(nb, nil, "gone5")
	c6, _ := l.container(nc, nil, "c6")
	// gone7 held c1's address before c1 (an address handed out again after
	// a crash) and registered last: the PTR record of a1 is gone7's.
	if err := l.srv.Register("neta", dnsd.Endpoint{Name: "gone7", Addrs: []netip.Addr{a1}}); err != nil {
		t.Fatal(err)
	}

	live := dnsd.Live{
		Networks:  []string{"neta", "netb"},
		Endpoints: []dnsd.LiveEndpoint{{"neta", "C1"}, {"netb", "c4"}, {"netc", "c6"}},
	}
	got, err := l.srv.GC(live)
	if err != nil {
		t.Fatal(err)
	}
	want := dnsd.Collected{Networks: []string{"netc"},
		Endpoints: []dnsd.LiveEndpoint{{"neta", "gone2"}, {"neta", "gone3"}, {"neta", "gone7"}, {"netb", "gone5"}}}
	slices.SortFunc(got.Endpoints, func(x, y dnsd.LiveEndpoint) int {
		return cmp.Or(strings.Compare(x.Network, y.Network), strings.Compare(x.Name, y.Name))
	})
	if !slices.Equal(got.Networks, want.Networks) || !slices.Equal(got.Endpoints, want.Endpoints) {
		t.Fatalf("GC: %+v, want %+v", got, want)
	}

	for _, proto := range []string{"udp", "tcp"} {
		// Live names answer, with their addresses only.
		for _, q := range []struct {
			name string
			want netip.Addr
		}{{"c1.", a1}, {"web.", a1}, {"web.nsnet.internal.", a1}} {
			r := mustQuery(t, c1, proto, sa, q.name, dns.TypeA, dns.RcodeSuccess)
			if got := addrs(r); !slices.Equal(got, []netip.Addr{q.want}) {
				t.Errorf("%s %s: %v, want [%v]", proto, q.name, got, q.want)
			}
		}
		r := mustQuery(t, c4, proto, sb, "c4.", dns.TypeA, dns.RcodeSuccess)
		if got := addrs(r); !slices.Equal(got, []netip.Addr{a4}) {
			t.Errorf("%s c4.: %v, want [%v]", proto, got, a4)
		}
		// The gone are NXDOMAIN, names and PTR records.
		for _, name := range []string{"gone2.", "gone3.", "gone7.", "gone2.nsnet.internal."} {
			mustQuery(t, c1, proto, sa, name, dns.TypeA, dns.RcodeNameError)
		}
		mustQuery(t, c4, proto, sb, "gone5.", dns.TypeA, dns.RcodeNameError)
		for _, c := range []struct {
			addr   netip.Addr
			server netip.AddrPort
		}{{a2, sa}, {a3, sa}, {a5, sb}} {
			rev, _ := dns.ReverseAddr(c.addr.String())
			ctr := c1
			if c.server == sb {
				ctr = c4
			}
			mustQuery(t, ctr, proto, c.server, rev, dns.TypePTR, dns.RcodeNameError)
		}
		rev, _ := dns.ReverseAddr(a1.String())
		r = mustQuery(t, c1, proto, sa, rev, dns.TypePTR, dns.RcodeSuccess)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "c1.nsnet.internal." {
			t.Errorf("%s PTR of c1's address: %v, want c1.nsnet.internal.", proto, r.Answer)
		}
		// netc is not live: its container is nobody's client now.
		mustQuery(t, c6, proto, sc, "c6.", dns.TypeA, dns.RcodeRefused)
	}

	// Again with the same live set: nothing more to collect.
	got, err = l.srv.GC(live)
	if err != nil || len(got.Networks) != 0 || len(got.Endpoints) != 0 {
		t.Fatalf("second GC: %+v, %v; want nothing", got, err)
	}
	// Nil Networks: every network is live, only endpoints go.
	got, err = l.srv.GC(dnsd.Live{Endpoints: []dnsd.LiveEndpoint{{"neta", "c1"}}})
	if err != nil || len(got.Networks) != 0 || !slices.Equal(got.Endpoints, []dnsd.LiveEndpoint{{"netb", "c4"}}) {
		t.Fatalf("GC with nil Networks: %+v, %v; want netb's c4 only", got, err)
	}
	mustQuery(t, c4, "udp", sb, "c4.", dns.TypeA, dns.RcodeNameError)
	mustQuery(t, c1, "udp", sa, "c1.", dns.TypeA, dns.RcodeSuccess)
}

// TestGC_badInput: a nil or closed server answers errors, not panics.
func TestGC_badInput(t *testing.T) {
	var s *dnsd.Server
	if _, err := s.GC(dnsd.Live{}); err == nil {
		t.Fatal("nil server: no error")
	}
	srv, err := dnsd.New(dnsd.Config{Upstreams: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := srv.GC(dnsd.Live{}); err != dnsd.ErrClosed {
		t.Fatalf("closed server: %v, want ErrClosed", err)
	}
}
