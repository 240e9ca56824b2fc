package linkdel

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// A link with addresses and a route: when Delete returns, the namespace
// has none of them left, and the name is free for a new link at once.
func TestDelete(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ctr.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	parent := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
	if err := h.LinkAdd(parent); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.LinkDel(parent) })
	if err := h.LinkSetUp(parent); err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		attrs := netlink.LinkAttrs{Name: "eth1", ParentIndex: parent.Attrs().Index, Namespace: netlink.NsFd(ctr.Fd())}
		if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		l, err := ch.LinkByName("eth1")
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr("172.29.0.81/16")
		if err := ch.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		a6, _ := netlink.ParseAddr("fd00:29::81/64")
		a6.Flags = unix.IFA_F_NODAD
		if err := ch.AddrAdd(l, a6); err != nil {
			t.Fatal(err)
		}
		if err := ch.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		gw, _ := netlink.ParseIPNet("0.0.0.0/0")
		if err := ch.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: gw, Gw: netip.MustParseAddr("172.29.0.1").AsSlice()}); err != nil {
			t.Fatal(err)
		}

		if err := Delete(ctr, l.Attrs().Index); err != nil {
			t.Fatalf("round %d: Delete: %v", round, err)
		}
		if _, err := ch.LinkByIndex(l.Attrs().Index); !nlerr.NotExist(err) {
			t.Fatalf("round %d: the link is still there (%v)", round, err)
		}
		addrs, err := ctr.Addrs(nil, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(addrs, func(a netlink.Addr) bool { return a.LinkIndex == l.Attrs().Index }); i >= 0 {
			t.Fatalf("round %d: address %v of the deleted link is left", round, addrs[i])
		}
		routes, err := ctr.Routes(netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(routes, func(r netlink.Route) bool { return r.LinkIndex == l.Attrs().Index }); i >= 0 {
			t.Fatalf("round %d: route %v of the deleted link is left", round, routes[i])
		}
	}
}

// A link that is not there: the kernel's answer, which says so.
func TestDeleteGone(t *testing.T) {
	t.Parallel()
	ctr := nstest.Container(t, nstest.Host(t))
	if err := Delete(ctr, 4242); !nlerr.NotExist(err) {
		t.Fatalf("Delete of no link: %v, want a not-exist error", err)
	}
}
