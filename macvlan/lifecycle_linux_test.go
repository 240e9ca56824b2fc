package macvlan

import (
	"testing"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// TestHalfMade: links that a killed New or Attach left before marking them
// (their group, no alias) are nsnet's: New completes the anchor, Attach
// replaces the container's interface, Detach removes it.
func TestHalfMade(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	parent, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	mk := func(h *netlink.Handle, name string, group uint32, ns int) {
		t.Helper()
		a := netlink.NewLinkAttrs()
		a.Name, a.ParentIndex, a.Group = name, parent.Attrs().Index, group
		if ns >= 0 {
			a.Namespace = netlink.NsFd(ns)
		}
		if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: a, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatal(err)
		}
	}
	// An anchor as a New killed after creating it leaves it.
	mk(h, AnchorName("half"), ctrlink.Group("macvlan/half"), -1)
	n := newNet(t, host, newAlloc(t), Config{Name: "half", Parent: "eth0", Subnets: s10()})
	if info, err := n.Inspect(t.Context()); err != nil || info.Index == 0 {
		t.Fatalf("Inspect after New completed the half-made anchor: %+v, %v", info, err)
	}

	// A container interface as an Attach killed after creating it leaves
	// it: eth0, no address, no mark.
	ctr := nstest.Container(t, host)
	mk(h, "eth0", epGroup("half", "c1"), ctr.Fd())
	e, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, Addrs: nil})
	if err != nil {
		t.Fatalf("Attach over a half-made interface: %v", err)
	}
	if e.IfName != "eth0" {
		t.Errorf("Attach gave %s, want eth0 made again", e.IfName)
	}
	other, _ := attach(t, n, "c2", "")
	mustPing(t, "c2 to the re-made c1", other, e.Addrs[0].Addr())

	// Detach removes a half-made interface.
	ctr3 := nstest.Container(t, host)
	mk(h, "eth0", epGroup("half", "c3"), ctr3.Fd())
	if err := n.Detach(t.Context(), "c3", ctr3); err != nil {
		t.Fatal(err)
	}
	if got := nstest.LinkNames(t, ctr3); len(got) != 1 {
		t.Errorf("after Detach of a half-made endpoint the container has %v, want lo only", got)
	}
}
