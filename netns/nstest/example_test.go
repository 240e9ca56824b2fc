//go:build linux

package nstest_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

// A test of another module: a host and a container joined by a veth pair,
// then a ping and a TCP exchange between them. As a test it reads:
//
//	func TestWire(t *testing.T) {
//		host := nstest.Host(t)
//		...
//	}
//
// Here it runs through runExample, which gives it a testing.TB as go test
// would: without privileges it is skipped (and the example passes), with
// CI=true it fails instead.
func Example() {
	runExample(func(t testing.TB) {
		host := nstest.Host(t)
		ctr := nstest.Container(t, host)
		ends, err := veth.Pair(t.Context(), host, veth.Config{Name: nstest.Name(t, "ve"), Peer: veth.End{NS: ctr, Name: "eth0"}, Up: true})
		if err != nil {
			t.Fatal(err)
		}
		// The pair is the test's: it must remove it, or Host reports it.
		t.Cleanup(func() { veth.Delete(context.Background(), host, ends.Host.Name) })
		addr(t, ends.Host, "10.99.0.1/24")
		addr(t, ends.Peer, "10.99.0.2/24")

		if err := nstest.Ping(t.Context(), ctr, netip.MustParseAddr("10.99.0.1")); err != nil {
			t.Fatal(err)
		}
		srv := nstest.Serve(t, host, "tcp", "10.99.0.1:8080")
		r, err := nstest.Exchange(t.Context(), ctr, "tcp", srv.Addr.String(), "hi")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the host saw %s", r.Peer.Addr())
	})
	// Output: ok
}

// Three hosts on one Ethernet segment, 198.18.0.1 to .3, each reaching the
// others.
func ExampleUnderlay() {
	runExample(func(t testing.TB) {
		topo := nstest.Underlay(t, 3)
		for _, a := range topo.Hosts {
			for _, b := range topo.Hosts {
				if err := nstest.Ping(t.Context(), a.NS, b.Addr.Addr()); err != nil {
					t.Error(err)
				}
			}
		}
	})
	// Output: ok
}

func addr(t testing.TB, l veth.Link, cidr string) {
	t.Helper()
	h, err := l.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(cidr)
	if err := h.AddrAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: l.Index}}, a); err != nil {
		t.Fatal(err)
	}
}

// runExample runs test as go test runs a test function, on a goroutine of
// its own with its cleanups at the end, and prints "ok" if it passed or
// was skipped (as go test counts a skip), or its errors.
func runExample(test func(t testing.TB)) {
	t := &exampleT{}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer t.finish()
		test(t)
	}()
	<-done
	if t.Failed() {
		fmt.Println("FAIL:", t.errors)
		return
	}
	fmt.Println("ok")
}

// exampleT is the testing.TB of runExample. The embedded TB is nil: only
// the methods below are there to call.
type exampleT struct {
	testing.TB
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	errors   []string
	cleanups []func()
}

func (t *exampleT) finish() {
	t.cancel()
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

func (t *exampleT) Helper()                  {}
func (t *exampleT) Name() string             { return "Example" }
func (t *exampleT) Context() context.Context { return t.ctx }
func (t *exampleT) Cleanup(f func())         { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Log(args ...any)          { fmt.Fprintln(os.Stderr, args...) }
func (t *exampleT) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
func (t *exampleT) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *exampleT) Errorf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errors = append(t.errors, fmt.Sprintf(format, args...))
}
func (t *exampleT) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.errors) > 0
}
func (t *exampleT) Fatal(args ...any)                 { t.Error(args...); runtime.Goexit() }
func (t *exampleT) Fatalf(format string, args ...any) { t.Errorf(format, args...); runtime.Goexit() }
func (t *exampleT) FailNow()                          { t.Errorf("FailNow"); runtime.Goexit() }
func (t *exampleT) Skip(args ...any)                  { t.Log(append([]any{"skip:"}, args...)...); runtime.Goexit() }
func (t *exampleT) Skipf(format string, args ...any) {
	t.Logf("skip: "+format, args...)
	runtime.Goexit()
}
func (t *exampleT) SkipNow() { runtime.Goexit() }
func (t *exampleT) TempDir() string {
	d, err := os.MkdirTemp("", "nstest-example-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
