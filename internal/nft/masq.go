package nft

import (
	"context"
	"github.com/nsnet/nsnet/internal/ipnet"
	"net/netip"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
)

// SetMasquerade makes subnets the masqueraded subnets of the network on
// bridge, for traffic that leaves through any other interface: the old
// ones go and the new ones come in one transaction, which creates the
// table if needed.
func SetMasquerade(ctx context.Context, host *netns.NS, bridge string, subnets []netip.Prefix) error {
	return change(ctx, host, "nft.set-masquerade", true, func(c *nftables.Conn, sc *schema) (bool, error) {
		if _, err := removeMasq(c, sc, bridge); err != nil {
			return false, err
		}
		return true, addMasq(c, sc, bridge, subnets)
	})
}

// RemoveMasquerade removes exactly the masquerade of the network on
// bridge; one that is not there is no error.
func RemoveMasquerade(ctx context.Context, host *netns.NS, bridge string) error {
	return change(ctx, host, "nft.remove-masquerade", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		n, err := removeMasq(c, sc, bridge)
		if n == 0 || err != nil {
			return false, err
		}
		return true, dropIfEmpty(c, sc, bridgeGone(sc, bridge, false))
	})
}

// Masqueraded returns the subnets masqueraded for the network on bridge.
func Masqueraded(ctx context.Context, host *netns.NS, bridge string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := change(ctx, host, "nft.masqueraded", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		for _, s := range []*nftables.Set{sc.own4, sc.own6} {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return false, err
			}
			for _, e := range elems {
				if p, ok := ownPrefix(e, bridge); ok {
					out = append(out, p)
				}
			}
		}
		return false, nil
	})
	return out, err
}

func addMasq(c *nftables.Conn, sc *schema, bridge string, subnets []netip.Prefix) error {
	for _, p := range subnets {
		p = p.Masked()
		own, masq := sc.own4, sc.masq4
		if p.Addr().Is6() {
			own, masq = sc.own6, sc.masq6
		}
		first, last := p.Addr(), ipnet.Last(p)
		if err := c.SetAddElements(own, []nftables.SetElement{{
			Key:    append(ifname(bridge), first.AsSlice()...),
			KeyEnd: append(ifname(bridge), last.AsSlice()...),
		}}); err != nil {
			return err
		}
		if err := c.SetAddElements(masq, intervalElems(first, last)); err != nil {
			return err
		}
	}
	return nil
}

// removeMasq batches the removal of bridge's masquerade elements and
// returns how many subnets it had.
func removeMasq(c *nftables.Conn, sc *schema, bridge string) (int, error) {
	n := 0
	for _, pair := range [][2]*nftables.Set{{sc.own4, sc.masq4}, {sc.own6, sc.masq6}} {
		own, masq := pair[0], pair[1]
		elems, err := c.GetSetElements(own)
		if err != nil {
			return 0, err
		}
		for _, e := range elems {
			p, ok := ownPrefix(e, bridge)
			if !ok {
				continue
			}
			if err := c.SetDeleteElements(own, []nftables.SetElement{e}); err != nil {
				return 0, err
			}
			if err := c.SetDeleteElements(masq, intervalElems(p.Addr(), ipnet.Last(p))); err != nil {
				return 0, err
			}
			n++
		}
	}
	return n, nil
}

// ownPrefix decodes an element of own4 or own6 if it is bridge's.
func ownPrefix(e nftables.SetElement, bridge string) (netip.Prefix, bool) {
	if len(e.Key) < 16 || string(e.Key[:16]) != string(ifname(bridge)) || len(e.KeyEnd) != len(e.Key) {
		return netip.Prefix{}, false
	}
	first, ok1 := netip.AddrFromSlice(e.Key[16:])
	last, ok2 := netip.AddrFromSlice(e.KeyEnd[16:])
	if !ok1 || !ok2 {
		return netip.Prefix{}, false
	}
	for bits := 0; bits <= first.BitLen(); bits++ {
		if p := netip.PrefixFrom(first, bits); p.Masked().Addr() == first && ipnet.Last(p) == last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// intervalElems are the elements of [first, last] in an interval set: its
// start and, unless last is the highest address, the end after it.
func intervalElems(first, last netip.Addr) []nftables.SetElement {
	elems := []nftables.SetElement{{Key: first.AsSlice()}}
	if next := last.Next(); next.IsValid() {
		elems = append(elems, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
	}
	return elems
}
