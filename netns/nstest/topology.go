//go:build linux

package nstest

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Addresses the fixtures give their links. They are documentation and
// benchmarking ranges (RFC 5737, RFC 2544), used only inside the test's own
// namespaces.
var (
	// UnderlayPrefix numbers the hosts of an Underlay: host i is .i+1.
	UnderlayPrefix = netip.MustParsePrefix("198.18.0.0/24")
	// OutsidePrefix numbers an Outside link: the host is .1, the outside .254.
	OutsidePrefix = netip.MustParsePrefix("198.51.100.0/24")
)

// A Topology is several hosts joined through an underlay bridge, as
// machines on one Ethernet segment.
type Topology struct {
	// Underlay is the namespace that holds the bridge (named "br0").
	Underlay *netns.NS
	// Hosts are the hosts, each a namespace with an uplink "eth0" that is a
	// port of the underlay bridge.
	Hosts []*TopoHost
}

// TopoHost is one host of a Topology.
type TopoHost struct {
	NS *netns.NS
	// Link is the name of the host's uplink, "eth0".
	Link string
	// Addr is the uplink's address, in UnderlayPrefix.
	Addr netip.Prefix
}

// Underlay builds n hosts (namespaces made with Host, so each has the same
// leak check) joined through a bridge in a sandbox namespace of its own.
// Host i's uplink eth0 has address 198.18.0.(i+1)/24 and is up. Everything
// is removed at cleanup.
func Underlay(t testing.TB, n int) *Topology {
	t.Helper()
	if n < 1 || n > 250 {
		t.Fatalf("nstest.Underlay: %d hosts: want 1 to 250", n)
	}
	underlay := newHost(t)
	topo := &Topology{Underlay: underlay.ns}
	h, err := topo.Underlay.Netlink()
	if err != nil {
		t.Fatalf("nstest.Underlay: %v", err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "br0"
	attrs.Flags = net.FlagUp
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("nstest.Underlay: bridge: %v", err)
	}
	for i := range n {
		host := newHost(t)
		addr := netip.PrefixFrom(nthAddr(UnderlayPrefix, i+1), UnderlayPrefix.Bits())
		port := fmt.Sprintf("h%d", i+1)
		if err := wire(topo.Underlay, port, br.Index, host.ns, "eth0", addr); err != nil {
			t.Fatalf("nstest.Underlay: host %d: %v", i+1, err)
		}
		host.rebase(t)
		topo.Hosts = append(topo.Hosts, &TopoHost{NS: host.ns, Link: "eth0", Addr: addr})
	}
	// The bridge, its ports and the hosts' uplinks are the fixture's, made
	// before the test got any of the namespaces: they are part of what the
	// leak checks compare with, and go with the namespaces, without the
	// wait for the kernel's free that deleting each link costs (~17 ms).
	underlay.rebase(t)
	return topo
}

// An Outside is a namespace standing for the world beyond a host's uplink:
// it answers on its address but has no route back to the host's container
// subnets, so containers reach it only through NAT.
type Outside struct {
	NS *netns.NS
	// Addr is the outside's address (198.51.100.254).
	Addr netip.Addr
	// HostLink is the host's uplink ("eth0") and HostAddr its address
	// (198.51.100.1/24). The host's default route goes via Addr.
	HostLink string
	HostAddr netip.Prefix
}

// NewOutside gives host an uplink "eth0" with address 198.51.100.1/24 and a
// default route via 198.51.100.254, the address of a new outside namespace
// at the other end. The host must not have an eth0 yet (an Underlay host
// has one). Everything is removed at cleanup.
func NewOutside(t testing.TB, host *netns.NS) *Outside {
	t.Helper()
	outside := newHost(t)
	out := &Outside{
		NS:       outside.ns,
		Addr:     nthAddr(OutsidePrefix, 254),
		HostLink: "eth0",
		HostAddr: netip.PrefixFrom(nthAddr(OutsidePrefix, 1), OutsidePrefix.Bits()),
	}
	// The outside's end is its "eth0"; the host's end is created in the
	// outside namespace and moved into host by wire.
	if err := wire(out.NS, "eth0", 0, host, out.HostLink, out.HostAddr); err != nil {
		t.Fatalf("nstest.NewOutside: %v", err)
	}
	t.Cleanup(func() { deleteLink(out.NS, "eth0") })
	oh, err := out.NS.Netlink()
	if err != nil {
		t.Fatalf("nstest.NewOutside: %v", err)
	}
	eth0, err := oh.LinkByName("eth0")
	if err == nil {
		err = oh.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(out.Addr, OutsidePrefix.Bits()))})
	}
	if err != nil {
		t.Fatalf("nstest.NewOutside: %v", err)
	}
	hh, err := host.Netlink()
	if err != nil {
		t.Fatalf("nstest.NewOutside: %v", err)
	}
	up, err := hh.LinkByName(out.HostLink)
	if err == nil {
		err = hh.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: out.Addr.AsSlice()})
	}
	if err != nil {
		t.Fatalf("nstest.NewOutside: default route: %v", err)
	}
	outside.rebase(t)
	return out
}

// wire creates a veth pair: end a in ns a (a port of bridge master there,
// if master is not 0), end b created directly in ns b with address addr;
// both up.
func wire(a *netns.NS, aName string, master int, b *netns.NS, bName string, addr netip.Prefix) error {
	ha, err := a.Netlink()
	if err != nil {
		return err
	}
	hb, err := b.Netlink()
	if err != nil {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = aName
	attrs.MasterIndex = master
	attrs.Flags = net.FlagUp
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: bName, PeerNamespace: netlink.NsFd(b.Fd())}
	if err := ha.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	peer, err := hb.LinkByName(bName)
	if err == nil {
		err = hb.AddrAdd(peer, &netlink.Addr{IPNet: ipnet.From(addr)})
	}
	if err == nil {
		err = hb.LinkSetUp(peer)
	}
	if err != nil {
		ha.LinkDel(v)
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	return nil
}

// deleteLink deletes a link of a fixture's that ends in a namespace the
// test holds: it returns when the kernel announces the link gone, not
// after its free (internal/linkdel).
func deleteLink(ns *netns.NS, name string) {
	h, err := ns.Netlink()
	if err != nil {
		return
	}
	if l, err := h.LinkByName(name); err == nil {
		linkdel.Delete(ns, l.Attrs().Index)
	}
}

// nthAddr returns the address n places after the start of p.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// Attach connects ns to the underlay's bridge as one more machine of the
// segment (a store, a router): a veth whose end in ns is "eth0", up, with
// address addr, and whose other end is a port of the bridge. The link is
// removed at cleanup. ns must not have an eth0 yet.
func (topo *Topology) Attach(t testing.TB, ns *netns.NS, addr netip.Prefix) {
	t.Helper()
	h, err := topo.Underlay.Netlink()
	if err != nil {
		t.Fatalf("nstest.Attach: %v", err)
	}
	br, err := h.LinkByName("br0")
	if err != nil {
		t.Fatalf("nstest.Attach: the underlay's bridge: %v", err)
	}
	port := Name(t, "at")
	if err := wire(topo.Underlay, port, br.Attrs().Index, ns, "eth0", addr); err != nil {
		t.Fatalf("nstest.Attach: %v", err)
	}
	t.Cleanup(func() { deleteLink(topo.Underlay, port) })
}
