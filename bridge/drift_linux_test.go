package bridge

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// drifted fails t unless err is a *DriftError naming a drift of kind.
func drifted(t *testing.T, what string, err error, kind string) {
	t.Helper()
	var d *DriftError
	if !errors.As(err, &d) || !errors.Is(err, ErrDrift) || !errors.Is(err, nsnet.ErrDrift) || !strings.HasPrefix(err.Error(), "bridge: ") {
		t.Fatalf("%s: Check: %v, want a *DriftError", what, err)
	}
	if !slices.ContainsFunc(d.Drifts, func(x Drift) bool { return x.Kind == kind }) {
		t.Fatalf("%s: Check: %v, want a missing %s", what, err, kind)
	}
}

// TestDrift: what someone changes behind nsnet's back is named by Check
// and repaired by the idempotent call, and traffic flows again.
func TestDrift(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	cfg := Config{Name: "drift", Subnets: subnet("10.43.0.0/24", "")}
	n := newNet(t, host, alloc, cfg)
	c1, e1 := attach(t, n, "c1", EndpointConfig{DefaultRoute: true})
	c2, _ := attach(t, n, "c2", EndpointConfig{})
	a1, gw := e1.Addrs[0], n.Config().Subnets[0].Gateway
	ep1 := EndpointConfig{ID: "c1", NS: c1, DefaultRoute: true}
	if err := n.Check(t.Context()); err != nil {
		t.Fatalf("Check of a fresh network: %v", err)
	}
	if err := n.CheckEndpoint(t.Context(), "c1", c1); err != nil {
		t.Fatalf("CheckEndpoint of a fresh endpoint: %v", err)
	}
	h, _ := host.Netlink()
	ch, _ := c1.Netlink()
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	repairEP := func(what string) {
		t.Helper()
		if _, err := n.Attach(t.Context(), ep1); err != nil {
			t.Fatalf("%s: Attach to repair: %v", what, err)
		}
		if err := n.CheckEndpoint(t.Context(), "c1", c1); err != nil {
			t.Fatalf("%s: after the repair: %v", what, err)
		}
		mustPing(t, what+": c2 to c1 after the repair", c2, a1.Addr())
	}
	repairNet := func(what string) *Network {
		t.Helper()
		m, err := New(t.Context(), host, alloc, cfg)
		if err != nil {
			t.Fatalf("%s: New to repair: %v", what, err)
		}
		if err := m.Check(t.Context()); err != nil {
			t.Fatalf("%s: after the repair: %v", what, err)
		}
		return m
	}

	// The container's address.
	if err := ch.AddrDel(eth0, &netlink.Addr{IPNet: ipnet.From(a1)}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "address deleted", n.CheckEndpoint(t.Context(), "c1", c1), "address")
	mustNotPing(t, "c2 to c1 without its address", c2, a1.Addr())
	repairEP("address deleted")

	// The container's default route.
	if err := ch.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice(), Priority: baseMetric}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "route deleted", n.CheckEndpoint(t.Context(), "c1", c1), "route")
	repairEP("route deleted")

	// The port.
	port, err := h.LinkByName(e1.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNoMaster(port); err != nil {
		t.Fatal(err)
	}
	drifted(t, "port removed", n.CheckEndpoint(t.Context(), "c1", c1), "port")
	mustNotPing(t, "c2 to c1 off the bridge", c2, a1.Addr())
	repairEP("port removed")

	// The allocation.
	if err := alloc.Release(t.Context(), n.pool, endpointOwner("drift", "c1")); err != nil {
		t.Fatal(err)
	}
	drifted(t, "allocation released", n.CheckEndpoint(t.Context(), "c1", c1), "allocation")
	repairEP("allocation released")
	if got := held(t, n, "c1"); len(got) != 1 || got[0].Leases()[0].Addr != a1 {
		t.Fatalf("after the repair c1 holds %+v, want its address %s", got, a1)
	}

	// The bridge's gateway address.
	br, _ := h.LinkByName(n.Config().Bridge)
	if err := h.AddrDel(br, &netlink.Addr{IPNet: ipnet.From(netipPrefix(gw, 24))}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "gateway address deleted", n.Check(t.Context()), "address")
	mustNotPing(t, "c1 to its gateway without it", c1, gw)
	repairNet("gateway address deleted")
	mustPing(t, "c1 to its gateway after the repair", c1, gw)

	// The isolation rules.
	if err := nft.RemoveNetwork(t.Context(), host, n.Config().Bridge); err != nil {
		t.Fatal(err)
	}
	drifted(t, "rules removed", n.Check(t.Context()), "rule")
	repairNet("rules removed")

	// The bridge itself: New makes it again, Attach makes the ports again.
	if err := h.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	drifted(t, "bridge deleted", n.Check(t.Context()), "bridge")
	n2 := repairNet("bridge deleted")
	for _, ep := range []EndpointConfig{ep1, {ID: "c2", NS: c2}} {
		if _, err := n2.Attach(t.Context(), ep); err != nil {
			t.Fatalf("Attach %s to the re-made bridge: %v", ep.ID, err)
		}
	}
	if err := n2.CheckEndpoint(t.Context(), "c1", c1); err != nil {
		t.Fatal(err)
	}
	mustPing(t, "c2 to c1 on the re-made bridge", c2, a1.Addr())
	_ = netns.ErrClosed
}

func netipPrefix(a netip.Addr, bits int) netip.Prefix { return netip.PrefixFrom(a, bits) }
