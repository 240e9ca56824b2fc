package portmap

import (
	"context"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
)

// State is everything nsnet keeps in a host's nftables table, as the
// caller holds it: the configurations of its bridge networks (their
// isolation), the networks it masquerades, and the mappings it published.
type State struct {
	// Networks are the bridge networks of the host, as Network.Config
	// returns them (the Bridge field set).
	Networks []bridge.Config
	// Masquerade are the networks given to nat.Masquerade.
	Masquerade []nat.Network
	// Mappings are the mappings Mapper.Add returned.
	Mappings []Mapping
}

// Reconcile makes nsnet's table in host hold exactly st, in one nftables
// transaction: every network's isolation and masquerade and every mapping,
// and nothing else. Call it when the table was deleted or flushed behind
// nsnet's back (a firewall reload, `nft flush ruleset`), or at start-up to
// drop what a crashed process left. The user chain keeps its rules; tables
// that are not nsnet's are not touched. Reservations are Mapper's: a
// Mapper that published the mappings keeps holding their ports.
//
// Bad input fails with a *ValidationError (or the nat or bridge package's)
// before the table is touched.
func Reconcile(ctx context.Context, host *netns.NS, st State) error {
	want := nft.State{Masquerade: map[string][]netip.Prefix{}}
	for _, n := range st.Masquerade {
		if err := n.Validate(); err != nil {
			return err
		}
		want.Masquerade[n.Bridge] = append(want.Masquerade[n.Bridge], n.Subnets...)
	}
	for _, c := range st.Networks {
		if err := c.Validate(); err != nil {
			return err
		}
		if c.Bridge == "" {
			return &ValidationError{"Networks", c.Name, "the Bridge field is empty: give Network.Config()"}
		}
		n := nft.Network{Bridge: c.Bridge, Internal: c.Internal, ICC: !c.DisableICC}
		for _, s := range c.Subnets {
			n.Subnets = append(n.Subnets, s.Subnet)
		}
		want.Networks = append(want.Networks, n)
	}
	for _, m := range st.Mappings {
		if err := m.Validate(); err != nil {
			return err
		}
		if m.HostPort == 0 {
			return &ValidationError{"HostPort", 0, "give the mapping Add returned, with its port"}
		}
		m.Proto = m.proto()
		want.Mappings = append(want.Mappings, m.elems()...)
	}
	return nft.Reconcile(ctx, host, want)
}
