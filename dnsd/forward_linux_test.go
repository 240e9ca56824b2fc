package dnsd_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestForward_cancel: a query waiting for a silent upstream ends with
// SERVFAIL as soon as its context is cancelled, or its server closed, not
// at the upstream's timeout; its forward slot is free again at once.
func TestForward_cancel(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	up.mode.Store("silent")
	srv, err := dnsd.New(dnsd.Config{NS: host, MaxForwards: 1, Timeout: time.Minute, Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	ask := func(ctx context.Context) chan int {
		q := new(dns.Msg)
		q.SetQuestion("ext.example.", dns.TypeA)
		p, _ := q.Pack()
		rc := make(chan int, 1)
		go func() {
			r := new(dns.Msg)
			if err := r.Unpack(srv.Handle(ctx, p, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, true)); err != nil {
				t.Error(err)
			}
			rc <- r.Rcode
		}()
		return rc
	}
	for i, stop := range []func(context.CancelFunc){
		func(cancel context.CancelFunc) { cancel() },
		func(context.CancelFunc) { srv.Close() },
	} {
		ctx, cancel := context.WithCancel(t.Context())
		rc := ask(ctx)
		for up.udp.Load() < int64(i+1) { // in flight
			time.Sleep(5 * time.Millisecond)
		}
		stop(cancel)
		select {
		case got := <-rc:
			if got != dns.RcodeServerFailure {
				t.Errorf("case %d: %s, want SERVFAIL", i, dns.RcodeToString[got])
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("case %d: the query still waits, half its timeout after it was ended", i)
		}
		cancel()
	}
	// The first query's slot was free for the second (MaxForwards 1).
	if st := srv.Stats(); st.ForwardBusy != 0 || st.ForwardFailed != 2 {
		t.Errorf("Stats: ForwardBusy %d ForwardFailed %d, want 0 and 2", st.ForwardBusy, st.ForwardFailed)
	}
}

// TestForward_timeouts: many queries over UDP in flight at once at a
// silent upstream each time out after Timeout, not before, and go to the
// next upstream, which answers them all.
func TestForward_timeouts(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	silent := newUpstream(t, out.NS, out.Addr)
	silent.mode.Store("silent")
	good := newUpstream(t, out.NS, out.Addr)
	const timeout = 500 * time.Millisecond
	l := newLabOn(t, host, dnsd.Config{Timeout: timeout, Upstreams: []netip.AddrPort{silent.addr, good.addr}})
	na, gw := l.network("neta", "172.30.1.0/24", false)
	c1, _ := l.container(na, nil, "c1")
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 1 {
				time.Sleep(timeout / 3) // two generations of deadlines
			}
			t0 := time.Now()
			r, err := query(c1, "udp", netip.AddrPortFrom(gw, 53), "ext.example.", dns.TypeA)
			if err != nil {
				t.Error(err)
				return
			}
			if d := time.Since(t0); r.Rcode != dns.RcodeSuccess || !slices.Equal(addrs(r), []netip.Addr{extAddr}) || d < timeout {
				t.Errorf("query %d: %s %v after %v; want %v after %v at least", i, dns.RcodeToString[r.Rcode], addrs(r), d, extAddr, timeout)
			}
		}()
	}
	wg.Wait()
	if st := l.srv.Stats(); silent.udp.Load() != n || good.udp.Load() != n || st.UpstreamErrors != n || st.Forwarded != n {
		t.Errorf("silent %d, good %d, UpstreamErrors %d, Forwarded %d; want %d each", silent.udp.Load(), good.udp.Load(), st.UpstreamErrors, st.Forwarded, n)
	}
}

// TestForward_socketsClosed: the socket of every forwarded query is
// closed, answered or timed out, while the server runs (the open
// descriptors stay within the stock ahead of need, whatever the number of
// queries) and all of them when it closes. Not parallel: it counts the
// process's descriptors.
func TestForward_socketsClosed(t *testing.T) {
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	up := newUpstream(t, out.NS, out.Addr)
	const timeout = 200 * time.Millisecond
	srv, err := dnsd.New(dnsd.Config{NS: host, Timeout: timeout, Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	client := []netip.Addr{netip.MustParseAddr("10.0.0.2")}
	ask := func(name string, want int) {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		p, _ := q.Pack()
		r := new(dns.Msg)
		if err := r.Unpack(srv.Handle(t.Context(), p, client, true)); err != nil {
			t.Fatal(err)
		}
		if r.Rcode != want {
			t.Fatalf("%s: %s, want %s", name, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
		}
	}
	before := openFDs(t)
	ask("ext.example.", dns.RcodeSuccess) // the stock is made
	const n = 1000
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 8 {
				name := "ext.example."
				if g == 0 && i%25 == 0 {
					name = "slow.example." // times out: SERVFAIL
				}
				want := dns.RcodeSuccess
				if name != "ext.example." {
					want = dns.RcodeServerFailure
				}
				ask(name, want)
			}
		}()
	}
	wg.Wait()
	// The stock (64), the sockets done with that the filler has not
	// closed yet (up to half the stock, and the timed-out ones), those in
	// flight (8) and the loop's own: far fewer than the queries.
	if got, most := openFDs(t), before+3*64; got > most {
		t.Errorf("after %d forwarded queries, %d descriptors open; want at most %d (%d before the first)", n, got, most, before)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got > before {
		t.Errorf("after Close, %d descriptors open; want %d as before the first query", got, before)
	}
}

// openFDs is the number of the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// TestForward_lateAnswers: an upstream that answers every query at once,
// then sends the same answer again and one with another address (as a
// replay or a forger would) while the query's socket waits to be closed
// or after its number went to a new socket: every client gets the first
// answer to its own question, whatever the later datagrams meet.
func TestForward_lateAnswers(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	pc, err := out.NS.ListenPacket("udp", netip.AddrPortFrom(out.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// The answer for name n<i>.example. is 10.99.<i/256>.<i%256>; the
	// late one the same address in 10.98.0.0/16.
	addrFor := func(name string, late bool) netip.Addr {
		var i int
		fmt.Sscanf(name, "n%d.example.", &i)
		b := byte(99)
		if late {
			b = 98
		}
		return netip.AddrFrom4([4]byte{10, b, byte(i >> 8), byte(i)})
	}
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
			answer := func(late bool) []byte {
				m := new(dns.Msg)
				m.SetReply(q)
				name := q.Question[0].Name
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: addrFor(name, late).AsSlice()}}
				p, _ := m.Pack()
				return p
			}
			first, again, forged := answer(false), answer(false), answer(true)
			pc.WriteTo(first, from)
			go func() {
				time.Sleep(time.Millisecond)
				pc.WriteTo(again, from)
				pc.WriteTo(forged, from)
			}()
		}
	}()
	srv, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddNetwork("n", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false)
	const n = 600 // several generations of the stock: numbers are reused
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += 8 {
				name := fmt.Sprintf("n%d.example.", i)
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				p, _ := q.Pack()
				r := new(dns.Msg)
				if err := r.Unpack(srv.Handle(t.Context(), p, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, true)); err != nil {
					t.Error(err)
					return
				}
				if a := addrs(r); r.Rcode != dns.RcodeSuccess || len(a) != 1 || a[0] != addrFor(name, false) {
					t.Errorf("%s: %s %v, want %v", name, dns.RcodeToString[r.Rcode], a, addrFor(name, false))
					return
				}
			}
		}()
	}
	wg.Wait()
}
