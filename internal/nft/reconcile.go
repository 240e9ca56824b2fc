//go:build linux

package nft

import (
	"context"
	"net/netip"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
)

// State is everything nsnet keeps in a host's table.
type State struct {
	// Networks are the bridge networks (AddNetwork's).
	Networks []Network
	// Masquerade holds the masqueraded subnets by bridge (SetMasquerade's).
	Masquerade map[string][]netip.Prefix
	Mappings   []Mapping
}

// Reconcile makes nsnet's table in host hold exactly st, in one
// transaction: after someone deleted or flushed it (a firewall reload, `nft
// flush ruleset`), or to drop what a crashed process left. The user chain
// keeps its rules.
func Reconcile(ctx context.Context, host *netns.NS, st State) error {
	return rebuild(ctx, host, "nft.reconcile", func(c *nftables.Conn, sc *schema) error {
		for _, s := range sc.sets() {
			c.FlushSet(s)
		}
		for _, n := range st.Networks {
			if err := addNetwork(c, sc, n); err != nil {
				return err
			}
		}
		for bridge, subnets := range st.Masquerade {
			if err := addMasq(c, sc, bridge, subnets); err != nil {
				return err
			}
		}
		return addMappings(c, sc, st.Mappings)
	})
}
