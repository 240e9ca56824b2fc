package linkdel_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/internal/linkdel"
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

		if err := linkdel.Delete(ctr, l.Attrs().Index); err != nil {
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
	if err := linkdel.Delete(ctr, 4242); !nlerr.NotExist(err) {
		t.Fatalf("Delete of no link: %v, want a not-exist error", err)
	}
}

// DeleteThen runs then once, with the interface not up any more (a veth
// pair, up, and the same pair already down), and returns after it with
// its error; an interface that is not there runs it too, without error;
// a deletion the kernel refuses (loopback) does not run it.
func TestDeleteThen(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range []bool{true, false} {
		for _, thenErr := range []error{nil, errors.New("then failed")} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "del0"}, PeerName: "del1"}
			if err := h.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			l, err := h.LinkByName("del0")
			if err != nil {
				t.Fatal(err)
			}
			if up {
				if err := h.LinkSetUp(l); err != nil {
					t.Fatal(err)
				}
			}
			idx := l.Attrs().Index
			runs, finished := 0, false
			err = linkdel.DeleteThen(host, idx, func() error {
				runs++
				if l, err := h.LinkByIndex(idx); err == nil && l.Attrs().Flags&net.FlagUp != 0 {
					t.Errorf("up %v: then runs with the interface up", up)
				}
				time.Sleep(20 * time.Millisecond) // DeleteThen waits for it
				finished = true
				return thenErr
			})
			if err != thenErr || runs != 1 || !finished {
				t.Errorf("up %v: DeleteThen: %v after %d runs (finished %v), want %v after one", up, err, runs, finished, thenErr)
			}
			if _, err := h.LinkByIndex(idx); !nlerr.NotExist(err) {
				t.Errorf("up %v: the interface is still there (%v)", up, err)
			}
			if _, err := h.LinkByName("del1"); !nlerr.NotExist(err) {
				t.Errorf("up %v: the peer is still there (%v)", up, err)
			}
		}
	}
	runs := 0
	if err := linkdel.DeleteThen(host, 4242, func() error { runs++; return nil }); err != nil || runs != 1 {
		t.Errorf("DeleteThen of no link: %v after %d runs, want nil after one", err, runs)
	}
	runs = 0
	if err := linkdel.DeleteThen(host, 1, func() error { runs++; return nil }); err == nil || runs != 0 {
		t.Errorf("DeleteThen of loopback: %v after %d runs, want the kernel's error and none", err, runs)
	}
}
