package macvlan

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func drifted(t *testing.T, what string, err error, kind string) {
	t.Helper()
	var d *DriftError
	if !errors.As(err, &d) || !errors.Is(err, ErrDrift) || !errors.Is(err, nsnet.ErrDrift) || !strings.HasPrefix(err.Error(), "macvlan: ") {
		t.Fatalf("%s: Check: %v, want a *DriftError", what, err)
	}
	if !slices.ContainsFunc(d.Drifts, func(x Drift) bool { return x.Kind == kind }) {
		t.Fatalf("%s: Check: %v, want a missing %s", what, err, kind)
	}
}

// TestDrift: what someone changes behind nsnet's back is named by Check and
// repaired by the idempotent call, and traffic flows again.
func TestDrift(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	alloc := newAlloc(t)
	cfg := Config{Name: "drift", Parent: "eth0", Subnets: s10()}
	n := newNet(t, host, alloc, cfg)
	c1, e1 := attach(t, n, "c1", "")
	c2, _ := attach(t, n, "c2", "")
	a1 := e1.Addrs[0]
	ep1 := EndpointConfig{ID: "c1", NS: c1, DefaultRoute: true}
	if err := n.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := n.CheckEndpoint(t.Context(), "c1", c1); err != nil {
		t.Fatal(err)
	}
	ch, _ := c1.Netlink()
	eth0, err := ch.LinkByName(e1.IfName)
	if err != nil {
		t.Fatal(err)
	}
	repair := func(what string) {
		t.Helper()
		if _, err := n.Attach(t.Context(), ep1); err != nil {
			t.Fatalf("%s: Attach to repair: %v", what, err)
		}
		if err := n.CheckEndpoint(t.Context(), "c1", c1); err != nil {
			t.Fatalf("%s: after the repair: %v", what, err)
		}
		mustPing(t, what+": c2 to c1 after the repair", c2, a1.Addr())
	}

	if err := ch.AddrDel(eth0, &netlink.Addr{IPNet: ipnet.From(a1)}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "address deleted", n.CheckEndpoint(t.Context(), "c1", c1), "address")
	repair("address deleted")

	if err := ch.LinkSetDown(eth0); err != nil {
		t.Fatal(err)
	}
	drifted(t, "interface down", n.CheckEndpoint(t.Context(), "c1", c1), "up")
	repair("interface down")

	if err := alloc.Release(t.Context(), n.pool, endpointOwner("drift", "c1")); err != nil {
		t.Fatal(err)
	}
	drifted(t, "allocation released", n.CheckEndpoint(t.Context(), "c1", c1), "allocation")
	repair("allocation released")
	_, allocs, _ := alloc.Inspect(t.Context(), n.pool)
	if i := slices.IndexFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner("drift", "c1") }); i < 0 || allocs[i].Leases()[0].Addr != a1 {
		t.Fatalf("after the repair c1's allocation: %+v, want %s", allocs, a1)
	}

	// The anchor's record of c1's address.
	anchor, err := n.anchorLink()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := host.Netlink()
	if err := h.LinkDelAltName(anchor, claimName(a1.Addr(), "c1")); err != nil {
		t.Fatal(err)
	}
	drifted(t, "record deleted", n.CheckEndpoint(t.Context(), "c1", c1), "record")
	repair("record deleted")

	// The pool, as a Delete killed after it left it.
	if _, err := alloc.GC(t.Context(), n.pool, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if err := alloc.DeletePool(t.Context(), n.pool); err != nil {
		t.Fatal(err)
	}
	drifted(t, "pool deleted", n.Check(t.Context()), "pool")
	if _, err := New(t.Context(), host, alloc, cfg); err != nil {
		t.Fatalf("New to repair: %v", err)
	}
	if err := n.Check(t.Context()); err != nil {
		t.Fatalf("after the repair: %v", err)
	}
	repair("pool deleted")
}
