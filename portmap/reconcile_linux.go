package portmap

import (
	"context"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
)

// State is everything nsnet keeps in a host's nftables table, as the
// caller holds it: its bridge networks (their isolation), the networks it
// masquerades, and the mappings it published. The types are portmap's own,
// so that portmap does not pull in the bridge and nat packages; a bridge
// network's Config and a nat.Network carry the same fields.
type State struct {
	// Networks are the bridge networks of the host.
	Networks []Network
	// Masquerade are the networks given to nat.Masquerade.
	Masquerade []Masquerade
	// Mappings are the mappings Mapper.Add returned.
	Mappings []Mapping
}

// Network is what the isolation rules need to know of a bridge network
// (bridge.Network.Config has these fields).
type Network struct {
	// Bridge is the network's bridge in the host namespace.
	Bridge  string
	Subnets []netip.Prefix
	// Internal networks have no egress.
	Internal bool
	// DisableICC drops traffic between the network's containers.
	DisableICC bool
}

// Masquerade is a masqueraded network, as given to nat.Masquerade.
type Masquerade struct {
	Bridge  string
	Subnets []netip.Prefix
}

func checkNet(field, bridge string, subnets []netip.Prefix) error {
	if why := ifname.Check(bridge); why != "" {
		return &ValidationError{field, bridge, "bridge name " + why}
	}
	for _, p := range subnets {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return &ValidationError{field, p, "not an IPv4 or IPv6 prefix"}
		}
	}
	return nil
}

// Reconcile makes nsnet's table in host hold exactly st, in one nftables
// transaction: every network's isolation and masquerade and every mapping
// (with the record of the interfaces that have route_localnet on for the
// mappings that cover 127.0.0.1), and nothing else. Call it when the table was deleted or flushed behind
// nsnet's back (a firewall reload, `nft flush ruleset`), or at start-up to
// drop what a crashed process left. The user chain keeps its rules; tables
// that are not nsnet's are not touched. Reservations are Mapper's: a
// Mapper that published the mappings keeps holding their ports.
//
// Bad input fails with a *ValidationError before the table is touched.
func Reconcile(ctx context.Context, host *netns.NS, st State) error {
	if host == nil {
		return &ValidationError{"host", nil, "no namespace"}
	}
	want := nft.State{Masquerade: map[string][]netip.Prefix{}}
	for _, n := range st.Masquerade {
		if err := checkNet("Masquerade", n.Bridge, n.Subnets); err != nil {
			return err
		}
		if len(n.Subnets) == 0 {
			return &ValidationError{"Masquerade", n.Bridge, "no subnet"}
		}
		want.Masquerade[n.Bridge] = append(want.Masquerade[n.Bridge], n.Subnets...)
	}
	for _, n := range st.Networks {
		if err := checkNet("Networks", n.Bridge, n.Subnets); err != nil {
			return err
		}
		want.Networks = append(want.Networks, nft.Network{Bridge: n.Bridge, Subnets: n.Subnets, Internal: n.Internal, ICC: !n.DisableICC})
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
	// The record of route_localnet, which a flush loses with the rest,
	// from the mappings that cover 127.0.0.1 (and route_localnet on for
	// them: Reconcile is also for a host whose state is not known).
	for _, m := range st.Mappings {
		if !m.coversLoopback() {
			continue
		}
		if l := linkTo(host, m.CtrAddr); l != nil && !slices.Contains(want.Localnet, l.Attrs().Name) {
			name := l.Attrs().Name
			if err := host.SetSysctl("net/ipv4/conf/"+name+"/route_localnet", "1"); err != nil {
				return err
			}
			want.Localnet = append(want.Localnet, name)
		}
	}
	return nft.Reconcile(ctx, host, want)
}
