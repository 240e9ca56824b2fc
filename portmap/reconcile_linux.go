package portmap

import (
	"context"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
)

func checkNet(field, bridge string, subnets []netip.Prefix) error {
	if why := ifname.Check(bridge); why != "" {
		return invalid(field, bridge, "bridge name "+why)
	}
	for _, p := range subnets {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return invalid(field, p, "not an IPv4 or IPv6 prefix")
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
		return invalid("host", nil, "no namespace")
	}
	want := nft.State{Masquerade: map[string][]netip.Prefix{}}
	for _, n := range st.Masquerade {
		if err := checkNet("Masquerade", n.Bridge, n.Subnets); err != nil {
			return err
		}
		if len(n.Subnets) == 0 {
			return invalid("Masquerade", n.Bridge, "no subnet")
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
			return invalid("HostPort", 0, "give the mapping Add returned, with its port")
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
