//go:build linux

package nft

import (
	"bytes"
	"context"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
)

// PruneGone forgets what nsnet's tables in host hold for interfaces that
// are no longer there: the isolation entries (bridges, internal, same,
// noicc) and the masquerade of bridges that are no links of host (a
// process died between deleting a bridge and its entries, or someone
// deleted the bridge behind nsnet's back), and the guarded ports whose
// links are gone. A table left with nothing of nsnet's goes, as with
// RemoveNetwork. The caller holds whatever keeps bridges from being made
// meanwhile (bridge.GC holds the host's lock): a bridge is added to the
// sets after its link exists, so a bridge being made is never taken for
// a gone one.
func PruneGone(ctx context.Context, host *netns.NS) error {
	links, err := host.Links()
	if err != nil {
		return err
	}
	if err := prunePorts(ctx, host, links); err != nil {
		return err
	}
	live := map[string]bool{}
	for _, l := range links {
		live[string(ifname(l.Attrs().Name))] = true
	}
	// A key of these sets starts with the bridge's name (16 bytes).
	isGone := func(key []byte) bool { return len(key) >= 16 && !live[string(key[:16])] }
	return change(ctx, host, "nft.prune", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		gone := map[string]bool{}
		for _, s := range []*nftables.Set{sc.bridges, sc.internal, sc.same, sc.noicc, sc.masqnets4, sc.masqnets6} {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return false, err
			}
			for _, e := range elems {
				if isGone(e.Key) {
					gone[string(bytes.TrimRight(e.Key[:16], "\x00"))] = true
				}
			}
		}
		if len(gone) == 0 {
			return false, nil
		}
		for _, s := range []*nftables.Set{sc.bridges, sc.internal, sc.same, sc.noicc} {
			if _, err := deleteElems(c, s, func(e nftables.SetElement) bool { return isGone(e.Key) }); err != nil {
				return false, err
			}
		}
		for b := range gone {
			if _, err := removeMasq(c, sc, b); err != nil {
				return false, err
			}
		}
		return true, dropIfEmpty(c, sc, func(s *nftables.Set, e nftables.SetElement) bool {
			switch s {
			case sc.bridges, sc.masqnets4, sc.masqnets6:
				return isGone(e.Key)
			}
			return false
		})
	})
}
