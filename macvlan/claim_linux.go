package macvlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// The kernel keeps which addresses live endpoints hold, whatever the IPAM
// store says (it may have been lost or reset). A container's interface
// lives only in the container's namespace, where no later process looks
// without knowing it, so the record is on the network's anchor in the
// host: one alternative interface name (IFLA_ALT_IFNAME) per address an
// endpoint holds, claimName, "ADDR@ID". It goes with the anchor, that is
// with the network. One request reads them all (they come with the
// anchor); the kernel allows about 495 alternative names on a link, so a
// network records at most maxClaims addresses per host, and an attach
// beyond that fails with ipam.ErrExhausted. A passthru network records
// none: it has one container, and the kernel refuses any other macvlan on
// the parent it holds.

// maxClaims is how many alternative names the kernel lets a link have:
// each counts as 132 bytes (ALTIFNAMSIZ and the attribute's header) of a
// property list of at most 65,535.
const maxClaims = 495

// claimName is the anchor's alternative name saying that endpoint id (or
// the shim, shimSuffix) holds a.
func claimName(a netip.Addr, id string) string { return a.String() + "@" + id }

// parseClaim is claimName's inverse, or false.
func parseClaim(name string) (netip.Addr, string, bool) {
	s, id, ok := strings.Cut(name, "@")
	if !ok || id != shimSuffix && names.Check(id, 64) != "" {
		return netip.Addr{}, "", false
	}
	a, err := netip.ParseAddr(s)
	return a, id, err == nil && a.String() == s
}

// claimsOf returns the claims on anchor l: address to the endpoint ID (or
// shimSuffix) holding it.
func claimsOf(l netlink.Link) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, alt := range l.Attrs().AltNames {
		if a, id, ok := parseClaim(alt); ok {
			out[a] = id
		}
	}
	return out
}

// byID groups claims by holder: ID to its addresses, ordered.
func byID(claims map[netip.Addr]string) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for a, id := range claims {
		out[id] = append(out[id], a)
	}
	for _, as := range out {
		slices.SortFunc(as, netip.Addr.Compare)
	}
	return out
}

// recorded reports whether the network records its endpoints' addresses
// on its anchor: all but passthru networks.
func (n *Network) recorded() bool { return n.cfg.Mode != ModePassthru }

// allocate allocates id's addresses (static, if given) and checks them
// against the kernel before handing them out: an address that the anchor
// records for another endpoint (the store lost it) goes back to that
// endpoint in the store, its allocation made again with the addresses the
// anchor records for it, and the allocation is tried again. It returns the
// anchor as it read it (nil for a passthru network).
func (n *Network) allocate(ctx context.Context, id string, static []netip.Addr) (ipam.Allocation, netlink.Link, error) {
	owner := endpointOwner(n.cfg.Name, id)
	for try := 0; ; try++ {
		al, err := n.alloc.Allocate(ctx, n.pool, owner, static...)
		if err != nil || !n.recorded() {
			return al, nil, err
		}
		l, err := n.anchorLink()
		if err != nil {
			n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner)
			return ipam.Allocation{}, nil, err
		}
		claims := claimsOf(l)
		holder := ""
		for _, le := range al.Leases() {
			if h, ok := claims[le.Addr.Addr()]; ok && h != id {
				holder = h
				break
			}
		}
		if holder == "" {
			return al, l, nil
		}
		// Lost by the store: give it back to its holder.
		n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner)
		held := byID(claims)[holder]
		if try >= 8 {
			return ipam.Allocation{}, nil, fmt.Errorf("macvlan: network %q: an address of %v is held by %q: %w", n.cfg.Name, al.Leases(), holder, ipam.ErrAddrInUse)
		}
		if err := n.rerecord(ctx, holder, held); err != nil {
			return ipam.Allocation{}, nil, err
		}
	}
}

// rerecord makes the allocation of holder (an endpoint ID or shimSuffix)
// again with the addresses the anchor records for it.
func (n *Network) rerecord(ctx context.Context, holder string, held []netip.Addr) error {
	if _, err := n.alloc.Allocate(ctx, n.pool, n.cfg.Name+"/"+holder, held...); err != nil {
		return fmt.Errorf("macvlan: network %q: giving %v back to %q: %w", n.cfg.Name, held, holder, err)
	}
	return nil
}

// rerecordAll makes again, in the store, the allocation of every holder
// that the anchor records and the store has lost (New's repair after a
// lost or reset store). An allocation that cannot be made is left to the
// holder's next Attach.
func (n *Network) rerecordAll(ctx context.Context) error {
	if !n.recorded() {
		return nil
	}
	l, err := n.anchorLink()
	if err != nil {
		return nil
	}
	_, allocs, err := n.alloc.Inspect(ctx, n.pool)
	if err != nil {
		return err
	}
	for holder, held := range byID(claimsOf(l)) {
		owner := n.cfg.Name + "/" + holder
		if slices.ContainsFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == owner }) {
			continue
		}
		if err := n.rerecord(ctx, holder, held); err != nil && ctx.Err() != nil {
			return err
		}
	}
	return nil
}

// claim records on the anchor that id holds addrs, and no other address.
// l is the anchor as read under id's lock, or nil to read it.
func (n *Network) claim(l netlink.Link, id string, addrs []netip.Prefix) error {
	if !n.recorded() {
		return nil
	}
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	if l == nil {
		if l, err = n.anchorLink(); err != nil {
			return err
		}
	}
	want := make([]string, len(addrs))
	for i, a := range addrs {
		want[i] = claimName(a.Addr(), id)
	}
	have := l.Attrs().AltNames
	for _, alt := range have {
		if _, hid, ok := parseClaim(alt); ok && hid == id && !slices.Contains(want, alt) {
			if err := h.LinkDelAltName(l, alt); err != nil && !nlerr.NotExist(err) {
				return &netns.OpError{Op: "macvlan.claim", NS: n.host.String(), Name: n.anchor + " " + alt, Err: err}
			}
		}
	}
	for _, name := range want {
		if slices.Contains(have, name) {
			continue
		}
		if len(have) >= maxClaims {
			return fmt.Errorf("macvlan: network %q records %d addresses on this host, the most its anchor can: %w", n.cfg.Name, len(have), ipam.ErrExhausted)
		}
		if err := h.LinkAddAltName(l, name); err != nil {
			if errors.Is(err, os.ErrExist) {
				err = fmt.Errorf("%w (%w)", ipam.ErrAddrInUse, err)
			}
			return &netns.OpError{Op: "macvlan.claim", NS: n.host.String(), Name: n.anchor + " " + name, Err: err}
		}
		have = append(have, name)
	}
	return nil
}

// unclaim removes the anchor's records of what id holds. A network
// without its anchor has none.
func (n *Network) unclaim(id string) error {
	return n.unclaimIf(func(hid string) bool { return hid == id })
}

// unclaimIf removes the anchor's records of the holders for which drop is
// true.
func (n *Network) unclaimIf(drop func(id string) bool) error {
	if !n.recorded() {
		return nil
	}
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	l, err := n.anchorLink()
	if err != nil {
		return nil
	}
	for _, alt := range l.Attrs().AltNames {
		if _, hid, ok := parseClaim(alt); ok && drop(hid) {
			if err := h.LinkDelAltName(l, alt); err != nil && !nlerr.NotExist(err) {
				return &netns.OpError{Op: "macvlan.unclaim", NS: n.host.String(), Name: n.anchor + " " + alt, Err: err}
			}
		}
	}
	return nil
}
