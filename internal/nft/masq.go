//go:build linux

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
		for _, s := range []*nftables.Set{sc.masqnets4, sc.masqnets6} {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return false, err
			}
			for _, e := range elems {
				if p, ok := masqPrefix(e, bridge); ok {
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
		nets, masq := sc.masqnets4, sc.masq4
		if p.Addr().Is6() {
			nets, masq = sc.masqnets6, sc.masq6
		}
		first, last := p.Addr(), ipnet.Last(p)
		key := append(append(ifname(bridge), first.AsSlice()...), last.AsSlice()...)
		if err := c.SetAddElements(nets, []nftables.SetElement{{Key: key}}); err != nil {
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
	for _, pair := range [][2]*nftables.Set{{sc.masqnets4, sc.masq4}, {sc.masqnets6, sc.masq6}} {
		nets, masq := pair[0], pair[1]
		elems, err := c.GetSetElements(nets)
		if err != nil {
			return 0, err
		}
		for _, e := range elems {
			p, ok := masqPrefix(e, bridge)
			if !ok {
				continue
			}
			if err := c.SetDeleteElements(nets, []nftables.SetElement{{Key: e.Key}}); err != nil {
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

// masqPrefix decodes an element of masqnets4 or masqnets6 if it is
// bridge's.
func masqPrefix(e nftables.SetElement, bridge string) (netip.Prefix, bool) {
	key := e.Key
	if len(key) != 16+2*4 && len(key) != 16+2*16 || string(key[:16]) != string(ifname(bridge)) {
		return netip.Prefix{}, false
	}
	alen := (len(key) - 16) / 2
	first, _ := netip.AddrFromSlice(key[16 : 16+alen])
	last, _ := netip.AddrFromSlice(key[16+alen:])
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
