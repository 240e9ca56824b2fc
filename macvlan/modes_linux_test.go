package macvlan

import (
	"errors"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// setHairpin turns the underlay bridge's port of host i (h<i+1>) into a
// reflective relay, as a VEPA-capable switch port is.
func setHairpin(t *testing.T, topo *nstest.Topology, i int) {
	t.Helper()
	h, err := topo.Underlay.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName([]string{"h1", "h2", "h3"}[i])
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetHairpin(l, true); err != nil {
		t.Fatal(err)
	}
}

// TestModes shows what each mode does with two containers a and b on one
// parent (host 1) and a container c of another host (host 2, bridge mode).
func TestModes(t *testing.T) {
	t.Parallel()

	// setup builds the two hosts and the three containers.
	setup := func(t *testing.T, mode Mode) (topo *nstest.Topology, n1 *Network, a, b, c Endpoint) {
		topo = nstest.Underlay(t, 2)
		n1 = newNet(t, topo.Hosts[0].NS, newAlloc(t), Config{Name: "m", Parent: "eth0", Mode: mode, Subnets: s10()})
		n2 := newNet(t, topo.Hosts[1].NS, newAlloc(t), Config{Name: "m", Parent: "eth0", Subnets: s10()})
		_, a = attach(t, n1, "a", "172.29.1.1")
		if mode != ModePassthru {
			_, b = attach(t, n1, "b", "172.29.1.2")
		}
		_, c = attach(t, n2, "c", "172.29.2.1")
		return
	}

	t.Run("bridge", func(t *testing.T) {
		t.Parallel()
		_, _, a, b, c := setup(t, ModeBridge)
		mustPing(t, "a -> b on one parent", a.NS, b.Addrs[0].Addr())
		mustTCP(t, "b -> a on one parent", b.NS, a.NS, a.Addrs[0].Addr(), b.Addrs[0].Addr())
		mustPing(t, "a -> c on another host", a.NS, c.Addrs[0].Addr())
	})

	t.Run("private", func(t *testing.T) {
		t.Parallel()
		topo, n1, a, b, c := setup(t, ModePrivate)
		mustNotPing(t, "a -> b on one parent", a.NS, b.Addrs[0].Addr())
		mustNotPing(t, "b -> a on one parent", b.NS, a.Addrs[0].Addr())
		mustPing(t, "a -> c on another host", a.NS, c.Addrs[0].Addr())
		mustPing(t, "b -> c on another host", b.NS, c.Addrs[0].Addr())
		// Not even a switch that sends frames back joins them.
		setHairpin(t, topo, 0)
		mustNotPing(t, "a -> b with a hairpin switch", a.NS, b.Addrs[0].Addr())
		// Nor can a shim be of use.
		var ve *netns.ValidationError
		_, err := n1.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")})
		if !errors.As(err, &ve) {
			t.Errorf("AddShim on a private network: %v", err)
		}
	})

	t.Run("vepa", func(t *testing.T) {
		t.Parallel()
		topo, _, a, b, c := setup(t, ModeVEPA)
		mustNotPing(t, "a -> b on one parent, plain switch", a.NS, b.Addrs[0].Addr())
		mustPing(t, "a -> c on another host", a.NS, c.Addrs[0].Addr())
		// A VEPA-capable switch (reflective relay) sends a's frames back
		// down the same port to b.
		setHairpin(t, topo, 0)
		// a gave up on b while the switch sent nothing back: its entry
		// for b is still resolving (the next ARP request only a second
		// after the last) or failed. A fresh start, as after the
		// switch's change a neighbour's would be.
		flushNeigh(t, a.NS)
		mustPing(t, "a -> b on one parent through a hairpin switch", a.NS, b.Addrs[0].Addr())
		mustTCP(t, "b -> a through a hairpin switch", b.NS, a.NS, a.Addrs[0].Addr(), b.Addrs[0].Addr())
	})

	t.Run("passthru", func(t *testing.T) {
		t.Parallel()
		topo, n1, a, _, c := setup(t, ModePassthru)
		host := topo.Hosts[0].NS
		mustPing(t, "a -> c on another host", a.NS, c.Addrs[0].Addr())
		mustTCP(t, "c -> a", c.NS, a.NS, a.Addrs[0].Addr(), c.Addrs[0].Addr())
		// a holds the parent whole, with its MAC.
		hh, _ := host.Netlink()
		parent, _ := hh.LinkByName("eth0")
		if a.MAC.String() != parent.Attrs().HardwareAddr.String() {
			t.Errorf("a's MAC %s, parent's %s", a.MAC, parent.Attrs().HardwareAddr)
		}
		// One container per passthru network.
		_, err := n1.Attach(t.Context(), EndpointConfig{ID: "b", NS: nstest.Container(t, host)})
		if !errors.Is(err, ErrInUse) {
			t.Errorf("a second passthru container: %v, want ErrInUse", err)
		}
		// And no other network on its parent.
		before := linkNames(t, host)
		_, err = New(t.Context(), host, newAlloc(t), Config{Name: "other", Parent: "eth0"})
		if !errors.Is(err, ErrInUse) {
			t.Errorf("another network on a passthru parent: %v, want ErrInUse", err)
		}
		if after := linkNames(t, host); len(after) != len(before) {
			t.Errorf("links %v, before %v", after, before)
		}
		info, err := n1.Inspect(t.Context())
		if err != nil || len(info.Endpoints) != 1 || info.Index != 0 {
			t.Errorf("Inspect while the container holds the parent: %+v, %v", info, err)
		}
		// Detach gives the parent back to the anchor, and another
		// container can have it.
		if err := n1.Detach(t.Context(), "a", nil); err != nil {
			t.Fatal(err)
		}
		l, err := hh.LinkByName(AnchorName("m"))
		if mv, ok := l.(*netlink.Macvlan); err != nil || !ok || mv.Mode != netlink.MACVLAN_MODE_PASSTHRU {
			t.Fatalf("anchor after Detach: %v, %v", l, err)
		}
		_, err = New(t.Context(), host, newAlloc(t), Config{Name: "other", Parent: "eth0"})
		if !errors.Is(err, ErrInUse) {
			t.Errorf("another network on a passthru network's parent: %v, want ErrInUse", err)
		}
		_, b := attach(t, n1, "b", "172.29.1.2")
		mustPing(t, "b -> c", b.NS, c.Addrs[0].Addr())
	})
}

// flushNeigh deletes the neighbour entries of ns.
func flushNeigh(t *testing.T, ns *netns.NS) {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := h.NeighList(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		h.NeighDel(&n)
	}
}
