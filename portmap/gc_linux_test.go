package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

// TestGCAcrossProcesses: a process publishes for owners A and B and is
// killed (SIGKILL); a new Mapper's GC with A live leaves exactly A's
// mappings (and a mapping without an owner), A's port still takes
// traffic, B's does not, and route_localnet, which B's mapping on
// 127.0.0.1 needed, is off again (A's do not need it).
func TestGCAcrossProcesses(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.43.0.0/24")
	ctrA, addrA := w.container(t, a, "A")
	ctrB, addrB := w.container(t, a, "B")
	nstest.Serve(t, ctrA, "tcp", "0.0.0.0:80")
	nstest.Serve(t, ctrA, "udp", "0.0.0.0:53")
	nstest.Serve(t, ctrB, "tcp", "0.0.0.0:80")
	uplink := w.out.HostAddr.Addr()
	msA := []portmap.Mapping{
		{HostAddr: uplink, HostPort: 8001, CtrAddr: addrA, CtrPort: 80, ID: "A"},
		{Proto: "udp", HostAddr: uplink, HostPort: 8002, CtrAddr: addrA, CtrPort: 53, ID: "A"},
	}
	msB := []portmap.Mapping{
		{HostPort: 8101, CtrAddr: addrB, CtrPort: 80, ID: "B"}, // every address: 127.0.0.1 too
		{Proto: "udp", HostPort: 8102, HostPortEnd: 8103, CtrAddr: addrB, CtrPort: 53, CtrPortEnd: 54, ID: "B"},
	}
	noOwner := portmap.Mapping{HostAddr: uplink, HostPort: 8201, CtrAddr: addrA, CtrPort: 80}

	c := startChild(t, w.host)
	for _, ms := range [][]portmap.Mapping{msA, msB, {noOwner}} {
		if got := c.do(t, "add", ms); got != "ok" {
			t.Fatalf("the child's AddAll: %s", got)
		}
	}
	br := a.Config().Bridge
	if v := sysctl(t, w, "net/ipv4/conf/"+br+"/route_localnet"); v != "1" {
		t.Fatalf("route_localnet of %s is %s with B's mapping on every address, want 1", br, v)
	}
	c.kill()

	mp := newMapper(t, w.host, portmap.Config{})
	defer mp.Close()
	if _, err := (*portmap.Mapper)(nil).GC(t.Context(), nil); !errors.Is(err, portmap.ErrNoMapper) {
		t.Errorf("GC of a nil Mapper: %v, want ErrNoMapper", err)
	}
	var nilCtx context.Context
	if _, err := mp.GC(nilCtx, nil); err == nil {
		t.Error("GC with a nil context: no error")
	}
	gone, err := mp.GC(t.Context(), []string{"A"})
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 3 || slices.ContainsFunc(gone, func(m portmap.Mapping) bool { return m.ID != "B" }) {
		t.Errorf("GC removed %v, want B's 3 ports", gone)
	}
	got, err := mp.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []portmap.Mapping{{Proto: "tcp", HostAddr: uplink, HostPort: 8001, CtrAddr: addrA, CtrPort: 80, ID: "A"},
		{Proto: "tcp", HostAddr: uplink, HostPort: 8201, CtrAddr: addrA, CtrPort: 80},
		{Proto: "udp", HostAddr: uplink, HostPort: 8002, CtrAddr: addrA, CtrPort: 53, ID: "A"}}
	if !slices.Equal(got, want) {
		t.Errorf("after GC the table holds %v, want %v", got, want)
	}
	for _, m := range got {
		if err := mp.Reserve(m); err != nil {
			t.Errorf("Reserve(%s): %v", m, err)
		}
	}
	if v := sysctl(t, w, "net/ipv4/conf/"+br+"/route_localnet"); v != "0" {
		t.Errorf("route_localnet of %s is %s once B's mappings are gone, want 0", br, v)
	}
	reach(t, "A's tcp port", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 8001))
	reach(t, "A's udp port", w.out.NS, "udp", netip.AddrPortFrom(uplink, 8002))
	noReach(t, "B's port", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 8101))

	// Again: nothing more to remove.
	if gone, err := mp.GC(t.Context(), []string{"A"}); err != nil || len(gone) != 0 {
		t.Errorf("GC again: %v, %v, want nothing", gone, err)
	}
	if err := mp.RemoveAll(t.Context(), append(msA, noOwner)); err != nil {
		t.Fatal(err)
	}
}

func sysctl(t *testing.T, w *world, key string) string {
	t.Helper()
	v, err := w.host.Sysctl(key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
