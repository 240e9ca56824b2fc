package overlay_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/overlay"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// drifted fails t unless err is a *DriftError naming a drift of kind.
func drifted(t *testing.T, what string, err error, kind string) {
	t.Helper()
	var d *overlay.DriftError
	if !errors.As(err, &d) || !errors.Is(err, overlay.ErrDrift) || !errors.Is(err, nsnet.ErrDrift) || errors.Is(err, bridge.ErrDrift) || !strings.HasPrefix(err.Error(), "overlay: ") {
		t.Fatalf("%s: Check: %v, want a *DriftError", what, err)
	}
	if !slices.ContainsFunc(d.Drifts, func(x overlay.Drift) bool { return x.Kind == kind }) {
		t.Fatalf("%s: Check: %v, want a missing %s", what, err, kind)
	}
}

// pingSoon is a ping that gives up quickly: for what must not answer.
func pingSoon(ns *netns.NS, to netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	return nstest.Ping(ctx, ns, to)
}

// TestDrift: what someone changes behind nsnet's back (the container's
// address and route, the port, the endpoint's record and allocation, an FDB
// and a neighbour entry, the ingress filter, the VXLAN device, the bridge)
// is named by Check or CheckEndpoint and repaired by the idempotent call
// (Attach, Create), and traffic across two hosts flows again.
func TestDrift(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	c := newCluster(t, 2, store)
	cfg := overlay.Config{Name: "ov", VNI: 0x90, Subnets: subnets("10.90.0.0/24")}
	if _, err := c.hosts[0].Create(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	c1, a1 := c.attach(t, 0, "ov", "c1")
	c2, a2 := c.attach(t, 1, "ov", "c2")
	eventually(t, "c2 reaches c1", func() error { return nstest.Ping(t.Context(), c2, a1) })

	// host1's process restarts: a new process knows nothing of its
	// endpoints but what the kernel and the store say.
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	host1NS := c.topo.Hosts[0].NS
	ec1 := overlay.EndpointConfig{ID: "c1", NS: c1}
	var h1 *overlay.Host
	var n1 *overlay.Network
	restart := func(attach bool) overlay.Endpoint {
		t.Helper()
		if h1 == nil {
			c.hosts[0].Crash()
		} else {
			h1.Crash()
		}
		var err error
		h1, err = overlay.Join(t.Context(), overlay.HostConfig{NS: host1NS, Name: "host1",
			VTEP: c.topo.Hosts[0].Addr.Addr(), Store: store, Alloc: alloc})
		if err != nil {
			t.Fatal(err)
		}
		h := h1
		t.Cleanup(func() { h.Close(context.Background()) })
		if n1, err = h1.Network(t.Context(), "ov"); err != nil {
			t.Fatal(err)
		}
		if !attach {
			return overlay.Endpoint{}
		}
		ep, err := n1.Attach(t.Context(), ec1)
		if err != nil || ep.Addrs[0].Addr() != a1 {
			t.Fatalf("Attach c1 again after the restart: %+v, %v", ep, err)
		}
		return ep
	}
	ep1 := restart(true)
	if err := n1.Check(t.Context()); err != nil {
		t.Fatalf("Check of a whole network: %v", err)
	}
	if err := n1.CheckEndpoint(t.Context(), "c1", c1); err != nil {
		t.Fatalf("CheckEndpoint of a whole endpoint: %v", err)
	}
	h, _ := host1NS.Netlink()
	ch, _ := c1.Netlink()
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	works := func(what string) {
		t.Helper()
		eventually(t, what+": c2 reaches c1", func() error { return nstest.Ping(t.Context(), c2, a1) })
		eventually(t, what+": c1 reaches c2", func() error { return nstest.Ping(t.Context(), c1, a2) })
	}
	broken := func(what string) {
		t.Helper()
		if pingSoon(c2, a1) == nil {
			t.Errorf("%s: c2 still reaches c1: the drift did not break it, the test shows nothing", what)
		}
	}
	repairEP := func(what string) {
		t.Helper()
		if _, err := n1.Attach(t.Context(), ec1); err != nil {
			t.Fatalf("%s: Attach to repair: %v", what, err)
		}
		if err := n1.CheckEndpoint(t.Context(), "c1", c1); err != nil {
			t.Fatalf("%s: after the repair: %v", what, err)
		}
		works(what)
	}
	repairNet := func(what string) {
		t.Helper()
		if _, err := h1.Create(t.Context(), cfg); err != nil {
			t.Fatalf("%s: Create to repair: %v", what, err)
		}
		if err := n1.Check(t.Context()); err != nil {
			t.Fatalf("%s: after the repair: %v", what, err)
		}
	}

	// The container's address.
	if err := ch.AddrDel(eth0, &netlink.Addr{IPNet: ipnet.From(ep1.Addrs[0])}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "address deleted", n1.CheckEndpoint(t.Context(), "c1", c1), "address")
	broken("address deleted")
	repairEP("address deleted")

	// The route to its subnet.
	sub := ep1.Addrs[0].Masked()
	if err := ch.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipnet.From(sub), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "route deleted", n1.CheckEndpoint(t.Context(), "c1", c1), "route")
	broken("route deleted")
	repairEP("route deleted")

	// The port.
	port, err := h.LinkByName(hostVethOf(t, host1NS, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNoMaster(port); err != nil {
		t.Fatal(err)
	}
	drifted(t, "port removed", n1.CheckEndpoint(t.Context(), "c1", c1), "port")
	broken("port removed")
	repairEP("port removed")

	// The endpoint's record: host2 forgets c1. (A host republishes the
	// records of the endpoints it attached if they go: this is a record
	// lost while its host's process was down.)
	h1.Crash()
	if kv, err := store.Get(t.Context(), "overlay/ep/ov/host1/c1"); err != nil {
		t.Fatal(err)
	} else if _, err := store.CAS(t.Context(), ipam.Op{Key: kv.Key, Rev: kv.Rev, Delete: true}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "record deleted", n1.CheckEndpoint(t.Context(), "c1", c1), "record")
	eventually(t, "host2 drops c1", func() error {
		if neighOf(t, c.topo.Hosts[1].NS, "ovvx90", a1) {
			return errors.New("still there")
		}
		return nil
	})
	broken("record deleted")
	restart(false)
	drifted(t, "record deleted, after the restart", n1.CheckEndpoint(t.Context(), "c1", c1), "record")
	repairEP("record deleted")

	// The allocation: Attach takes the same address again.
	if err := alloc.Release(t.Context(), "overlay.ov", "c1"); err != nil {
		t.Fatal(err)
	}
	drifted(t, "allocation released", n1.CheckEndpoint(t.Context(), "c1", c1), "allocation")
	repairEP("allocation released")
	if _, allocs, _ := alloc.Inspect(t.Context(), "overlay.ov"); !slices.ContainsFunc(allocs, func(a ipam.Allocation) bool {
		return a.Owner == "c1" && a.Leases()[0].Addr.Addr() == a1
	}) {
		t.Errorf("after the repair the pool holds %+v, want c1 at %s", allocs, a1)
	}

	// host1's FDB entry and neighbour entry of c2.
	vx, err := h.LinkByName("ovvx90")
	if err != nil {
		t.Fatal(err)
	}
	mac2 := macOf(t, c2)
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		HardwareAddr: mac2, IP: c.topo.Hosts[1].Addr.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "fdb entry deleted", n1.Check(t.Context()), "fdb")
	repairNet("fdb entry deleted")
	works("fdb entry deleted")
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_INET, IP: a2.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "neighbour entry deleted", n1.Check(t.Context()), "neighbour")
	// c1 asks again: no one answers.
	if err := ch.NeighDel(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: unix.AF_INET, IP: a2.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	if pingSoon(c1, a2) == nil {
		t.Error("c1 still reaches c2 without the neighbour entry: the test shows nothing")
	}
	repairNet("neighbour entry deleted")
	works("neighbour entry deleted")

	// The ingress filter: host1 no longer hears host2.
	if err := nft.SetVXLAN(t.Context(), host1NS, []uint32{0x90}, []nft.VXLAN{{VNI: 0x90, Port: overlay.DefaultPort}}); err != nil {
		t.Fatal(err)
	}
	drifted(t, "filter peer removed", n1.Check(t.Context()), "filter")
	broken("filter peer removed")
	repairNet("filter peer removed")
	works("filter peer removed")

	// The VXLAN device, with every entry on it.
	if err := h.LinkDel(vx); err != nil {
		t.Fatal(err)
	}
	drifted(t, "vxlan device deleted", n1.Check(t.Context()), "vxlan")
	broken("vxlan device deleted")
	repairNet("vxlan device deleted")
	works("vxlan device deleted")

	// The bridge, and with it the port.
	br, err := h.LinkByName("ovbr90")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	drifted(t, "bridge deleted", n1.Check(t.Context()), "bridge")
	drifted(t, "bridge deleted", n1.CheckEndpoint(t.Context(), "c1", c1), "port")
	broken("bridge deleted")
	repairNet("bridge deleted")
	repairEP("bridge deleted")
}

// hostVethOf returns the name of the host veth whose peer is the eth0 of
// a container of host with endpoint ID id: the one with the mark.
func hostVethOf(t *testing.T, host *netns.NS, id string) string {
	t.Helper()
	links, err := host.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() == "veth" && strings.Contains(l.Attrs().Alias, `"id":"`+id+`"`) {
			return l.Attrs().Name
		}
	}
	t.Fatalf("no host veth of %s: %v", id, nstest.LinkNames(t, host))
	return ""
}
