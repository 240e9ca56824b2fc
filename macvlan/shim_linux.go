package macvlan

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// afterShimAddr, when a test sets it, is called by AddShim once the shim
// has its address, to inject a failure half way.
var afterShimAddr func() error

// AddShim lets the host reach its own containers, which plain macvlan
// cannot: the kernel delivers nothing between a parent and the macvlan
// interfaces on it. The network's anchor, a bridge-mode macvlan of the host
// on the same parent, becomes the shim: it gets cfg.Addr (reserved in the
// network's pool, with a full-length prefix), goes up, and carries routes
// from that address to cfg.Routes (by default the network's subnets). Like
// `ip addr add ADDR/32 dev SHIM; ip link set SHIM up; ip route add ROUTE
// dev SHIM src ADDR`.
//
// Adding the shim as it exists returns it; another shim of the network
// fails with ErrExists. Bad input fails with a *netns.ValidationError before
// anything is changed: an address outside the subnets (or the gateway), a
// route outside them or of the other family, and networks whose containers
// a host interface on the parent cannot reach: passthru (the container
// holds the parent alone) and private (its containers talk to no other
// interface of the parent). An address that a container holds fails with
// ipam.ErrAddrInUse. A failure half way leaves the anchor as it was.
//
// The shim is in bridge mode: it reaches a bridge network's containers
// inside the host, and a vepa network's only through a switch that sends
// frames back.
func (n *Network) AddShim(ctx context.Context, cfg ShimConfig) (Shim, error) {
	if err := n.usable(); err != nil {
		return Shim{}, err
	}
	switch n.cfg.Mode {
	case ModePassthru:
		return Shim{}, bad("Network.Mode", string(n.cfg.Mode), "a passthru container holds the parent alone: no shim can share it")
	case ModePrivate:
		return Shim{}, bad("Network.Mode", string(n.cfg.Mode), "private containers talk to no other interface on the parent: a shim could not reach them")
	}
	if !cfg.Addr.IsValid() {
		return Shim{}, bad("ShimConfig.Addr", cfg.Addr.String(), "not an address")
	}
	cfg.Addr = cfg.Addr.Unmap()
	if err := checkAddrs("ShimConfig.Addr", []netip.Addr{cfg.Addr}, n.cfg.Subnets); err != nil {
		return Shim{}, err
	}
	routes := cfg.Routes
	if len(routes) == 0 {
		for _, s := range n.cfg.Subnets {
			if s.Subnet.Addr().Is4() == cfg.Addr.Is4() {
				routes = append(routes, s.Subnet)
			}
		}
	}
	for _, r := range routes {
		if !r.IsValid() || r != r.Masked() {
			return Shim{}, bad("ShimConfig.Routes", r.String(), "not a network prefix (host bits set?)")
		}
		if r.Addr().Is4() != cfg.Addr.Is4() {
			return Shim{}, bad("ShimConfig.Routes", r.String(), "not of the family of ShimConfig.Addr")
		}
		if !slices.ContainsFunc(n.cfg.Subnets, func(s ipam.SubnetConfig) bool { return s.Subnet.Bits() <= r.Bits() && s.Subnet.Contains(r.Addr()) }) {
			return Shim{}, bad("ShimConfig.Routes", r.String(), "outside the network's subnets")
		}
	}
	if err := ctx.Err(); err != nil {
		return Shim{}, err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return Shim{}, err
	}
	l, err := n.anchorLink()
	if err != nil {
		return Shim{}, err
	}
	a := l.Attrs()
	want := Shim{Name: a.Name, Index: a.Index, Addr: netip.PrefixFrom(cfg.Addr, cfg.Addr.BitLen()), Routes: routes}
	if a.Flags&net.FlagUp != 0 {
		have, err := readShim(n.host, a)
		if err != nil {
			return Shim{}, err
		}
		if have.Addr == want.Addr && sameRoutes(have.Routes, want.Routes) {
			// Its address stays the shim's in the store (lost or reset)
			// and on the anchor.
			if _, err := n.alloc.Allocate(ctx, n.pool, shimOwner(n.cfg.Name), cfg.Addr); err != nil {
				return Shim{}, fmt.Errorf("macvlan: shim of %q: %w", n.cfg.Name, err)
			}
			if err := n.claim(nil, shimSuffix, []netip.Prefix{want.Addr}); err != nil {
				return Shim{}, err
			}
			return have, nil
		}
		return Shim{}, fmt.Errorf("macvlan: network %q has a shim %s with other settings: %w", n.cfg.Name, have.Addr, ErrExists)
	}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "macvlan.shim." + op, NS: n.host.String(), Name: a.Name, Err: err}
	}

	owner := shimOwner(n.cfg.Name)
	_, anchor, err := n.allocate(ctx, shimSuffix, []netip.Addr{cfg.Addr})
	if err != nil {
		return Shim{}, fmt.Errorf("macvlan: shim of %q: %w", n.cfg.Name, err)
	}
	fail := func(err error) (Shim, error) {
		n.clearShim(l)
		n.unclaim(shimSuffix)
		n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner)
		return Shim{}, err
	}
	if err := n.claim(anchor, shimSuffix, []netip.Prefix{want.Addr}); err != nil {
		return fail(err)
	}
	// The claim changed the anchor's names: read it again.
	if l, err = n.anchorLink(); err != nil {
		return fail(err)
	}
	if cfg.Addr.Is6() {
		if err := n.host.SetSysctl("net/ipv6/conf/"+a.Name+"/disable_ipv6", "0"); err != nil {
			return fail(err)
		}
	}
	if err := n.host.SetSysctl("net/ipv4/conf/"+a.Name+"/arp_notify", "1"); err != nil {
		return fail(err)
	}
	na := &netlink.Addr{IPNet: ipnet.From(want.Addr)}
	if cfg.Addr.Is6() {
		na.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, na); err != nil {
		return fail(opErr("address", err))
	}
	if afterShimAddr != nil {
		if err := afterShimAddr(); err != nil {
			return fail(err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fail(opErr("up", err))
	}
	for _, r := range routes {
		route := &netlink.Route{LinkIndex: a.Index, Dst: ipnet.From(r), Src: cfg.Addr.AsSlice(), Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(route); err != nil {
			return fail(opErr("route", err))
		}
	}
	return want, nil
}

// RemoveShim takes the host's shim away: its routes, its address (released
// in the pool), and the anchor goes down again. Removing a shim that is not
// there succeeds, and so does removing the shim of a network that is gone.
func (n *Network) RemoveShim(ctx context.Context) error {
	if err := n.usable(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := n.anchorLink()
	if err == nil {
		if err := n.clearShim(l); err != nil {
			return err
		}
	}
	if err := n.unclaim(shimSuffix); err != nil {
		return err
	}
	return n.alloc.Release(ctx, n.pool, shimOwner(n.cfg.Name))
}

// anchorLink returns the network's anchor, or an error matching
// ErrNotFound.
func (n *Network) anchorLink() (netlink.Link, error) {
	h, err := n.host.Netlink()
	if err != nil {
		return nil, err
	}
	l, err := h.LinkByName(n.anchor)
	if err != nil {
		return nil, fmt.Errorf("macvlan: network %q: anchor %s: %w", n.cfg.Name, n.anchor, ErrNotFound)
	}
	if m, ok := decodeNetMark(l.Attrs().Alias); !ok || m.Name != n.cfg.Name || l.Type() != "macvlan" {
		return nil, fmt.Errorf("macvlan: network %q: %s is not its anchor: %w", n.cfg.Name, n.anchor, ErrNotFound)
	}
	return l, nil
}

// clearShim removes the shim's routes and addresses and sets the anchor
// down.
func (n *Network) clearShim(l netlink.Link) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	a := l.Attrs()
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "macvlan.shim." + op, NS: n.host.String(), Name: a.Name, Err: err}
	}
	if err := h.LinkSetDown(l); err != nil {
		return opErr("down", err)
	}
	routes, err := n.host.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.LinkIndex == a.Index && r.Dst != nil {
			h.RouteDel(&r)
		}
	}
	addrs, err := n.host.Addrs(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, ad := range addrs {
		if err := h.AddrDel(l, &ad); err != nil {
			return opErr("address", err)
		}
	}
	return n.host.SetSysctl("net/ipv6/conf/"+a.Name+"/disable_ipv6", "1")
}

// readShim reads the shim off an anchor that is up: its (first, not
// link-local) address and the routes that leave from it.
func readShim(host *netns.NS, a *netlink.LinkAttrs) (Shim, error) {
	shim := Shim{Name: a.Name, Index: a.Index}
	addrs, err := host.Addrs(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Index: a.Index}}, netlink.FAMILY_ALL)
	if err != nil {
		return Shim{}, err
	}
	for _, ad := range addrs {
		ip, _ := netip.AddrFromSlice(ad.IP)
		ones, _ := ad.Mask.Size()
		if ip = ip.Unmap(); !ip.IsLinkLocalUnicast() && !shim.Addr.IsValid() {
			shim.Addr = netip.PrefixFrom(ip, ones)
		}
	}
	routes, err := host.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return Shim{}, err
	}
	for _, r := range routes {
		if r.LinkIndex != a.Index || r.Dst == nil || r.Src == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(r.Src)
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if src.Unmap() == shim.Addr.Addr() {
			shim.Routes = append(shim.Routes, netip.PrefixFrom(dst.Unmap(), ones))
		}
	}
	return shim, nil
}

func sameRoutes(a, b []netip.Prefix) bool {
	cmp := func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr())*256 + x.Bits() - y.Bits() }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}
