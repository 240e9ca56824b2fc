//go:build linux

package nft

import (
	"context"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
)

// HasNetwork reports whether host's table holds network n's isolation
// elements as AddNetwork puts them: its bridge in the bridges and same
// sets, and in the internal and no-ICC sets exactly when n says so. A host
// without nsnet's table has none.
func HasNetwork(ctx context.Context, host *netns.NS, n Network) (bool, error) {
	ok := false
	err := change(ctx, host, "nft.check-network", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		has := func(s *nftables.Set, key []byte) (bool, error) {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return false, err
			}
			for _, e := range elems {
				if string(e.Key) == string(key) {
					return true, nil
				}
			}
			return false, nil
		}
		for _, want := range []struct {
			s   *nftables.Set
			key []byte
			in  bool
		}{
			{sc.bridges, ifname(n.Bridge), true},
			{sc.same, pair(n.Bridge), true},
			{sc.internal, ifname(n.Bridge), n.Internal},
			{sc.noicc, pair(n.Bridge), !n.ICC},
		} {
			in, err := has(want.s, want.key)
			if err != nil || in != want.in {
				return false, err
			}
		}
		ok = true
		return false, nil
	})
	return ok, err
}
