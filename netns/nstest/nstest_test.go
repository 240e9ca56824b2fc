//go:build linux

package nstest_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// recorder is a testing.TB whose cleanups run when the test says, and whose
// errors are recorded instead of failing the test.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	errors   []string
	cleanups []func()
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.TB.FailNow()
}
func (r *recorder) finish() string {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	return strings.Join(r.errors, "\n")
}

func TestHostReportsLeaks(t *testing.T) {
	t.Parallel()
	rec := &recorder{TB: t}
	host := nstest.Host(rec)
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	name := nstest.Name(t, "leak")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: netlink.NewIPNet(netip.MustParseAddr("203.0.113.1").AsSlice())}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: br.Index, Dst: netlink.NewIPNet(netip.MustParseAddr("203.0.113.7").AsSlice())}); err != nil {
		t.Fatal(err)
	}
	if err := host.NFTables(func(c *nftables.Conn) error {
		c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "left"})
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	got := rec.finish()
	for _, want := range []string{"link " + name, "address 203.0.113.1/32", "route 203.0.113.7/32 dev", "nftables table inet left"} {
		if !strings.Contains(got, want) {
			t.Errorf("leak report = %q, want %q", got, want)
		}
	}

}

func TestHostCleanReportsNothing(t *testing.T) {
	t.Parallel()
	rec := &recorder{TB: t}
	host := nstest.Host(rec)
	ctr := nstest.Container(rec, host)
	if host.Equal(ctr) {
		t.Fatal("container is the host")
	}
	if got := rec.finish(); got != "" {
		t.Fatalf("report for a clean test: %q", got)
	}
}

func TestDirReportsLeaks(t *testing.T) {
	t.Parallel()
	rec := &recorder{TB: t}
	dir := nstest.Dir(rec)
	ns, err := dir.New("left")
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	got := rec.finish()
	if !strings.Contains(got, "left") {
		t.Fatalf("report = %q, want the named namespace", got)
	}
	if names, _ := dir.List(); len(names) != 0 {
		t.Fatalf("Dir cleanup left %v", names)
	}
}

func TestName(t *testing.T) {
	t.Parallel()
	a, b := nstest.Name(t, "nsv"), nstest.Name(t, "nsv")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, "nsv") {
		t.Fatalf("Name = %q, %q", a, b)
	}
}

func TestUnderlay(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 3)
	if len(topo.Hosts) != 3 {
		t.Fatalf("%d hosts", len(topo.Hosts))
	}
	srv := nstest.Serve(t, topo.Hosts[2].NS, "tcp", "0.0.0.0:7000")
	for i, a := range topo.Hosts {
		if want := netip.MustParsePrefix(fmt.Sprintf("198.18.0.%d/24", i+1)); a.Addr != want || a.Link != "eth0" {
			t.Errorf("host %d: %s %s, want eth0 %s", i, a.Link, a.Addr, want)
		}
		for j, b := range topo.Hosts {
			if i != j {
				if err := nstest.Ping(t.Context(), a.NS, b.Addr.Addr()); err != nil {
					t.Errorf("host %d to host %d: %v", i, j, err)
				}
			}
		}
	}
	r, err := nstest.Exchange(t.Context(), topo.Hosts[0].NS, "tcp", netip.AddrPortFrom(topo.Hosts[2].Addr.Addr(), srv.Addr.Port()).String(), "across")
	if err != nil || r.Data != "across" || r.Peer.Addr() != topo.Hosts[0].Addr.Addr() {
		t.Fatalf("TCP across the underlay: %+v, %v", r, err)
	}
}

func TestOutside(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	if err := nstest.Ping(t.Context(), host, out.Addr); err != nil {
		t.Fatal(err)
	}
	srv := nstest.Serve(t, out.NS, "udp", "0.0.0.0:5353")
	r, err := nstest.Exchange(t.Context(), host, "udp", netip.AddrPortFrom(out.Addr, srv.Addr.Port()).String(), "dgram")
	if err != nil || r.Data != "dgram" || r.Peer.Addr() != out.HostAddr.Addr() {
		t.Fatalf("UDP to the outside: %+v, %v", r, err)
	}
	// Nothing answers at an address nobody has; the ping says so.
	if err := nstest.Ping(t.Context(), host, netip.MustParseAddr("198.51.100.77")); err == nil {
		t.Fatal("ping of an unused address succeeded")
	}
	// A stopped server no longer answers.
	srv.Close()
	if _, err := nstest.Exchange(t.Context(), host, "udp", netip.AddrPortFrom(out.Addr, srv.Addr.Port()).String(), "x"); err == nil {
		t.Fatal("exchange with a stopped server succeeded")
	}
}
