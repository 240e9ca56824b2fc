package nat

import (
	"context"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
)

// Masquerade masquerades n's subnets for traffic leaving host through any
// interface but n.Bridge and turns on IPv4 (and, with an IPv6 subnet,
// IPv6) forwarding in host, in one nftables transaction. Masquerading a
// network again changes nothing; other subnets replace the old ones in
// the same transaction.
func Masquerade(ctx context.Context, host *netns.NS, n Network) error {
	if err := n.Validate(); err != nil {
		return err
	}
	have, err := nft.Masqueraded(ctx, host, n.Bridge)
	if err != nil {
		return err
	}
	want := make([]netip.Prefix, len(n.Subnets))
	for i, p := range n.Subnets {
		want[i] = p.Masked()
	}
	if !sameSet(have, want) {
		if err := nft.SetMasquerade(ctx, host, n.Bridge, want); err != nil {
			return err
		}
	}
	return forwarding(host, want)
}

func sameSet(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// forwarding turns on forwarding for the families of subnets in host.
func forwarding(host *netns.NS, subnets []netip.Prefix) error {
	keys := []string{"net.ipv4.ip_forward"}
	if slices.ContainsFunc(subnets, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		keys = append(keys, "net.ipv6.conf.all.forwarding")
	}
	for _, k := range keys {
		if err := host.SetSysctl(k, "1"); err != nil {
			return err
		}
	}
	return nil
}

// Remove removes exactly the masquerade of the network on bridge.
// Forwarding stays on (other networks may need it). A network without
// masquerade, or a host without nsnet's table, is no error.
func Remove(ctx context.Context, host *netns.NS, bridge string) error {
	if why := ifname.Check(bridge); why != "" {
		return &ValidationError{"Bridge", bridge, why}
	}
	return nft.RemoveMasquerade(ctx, host, bridge)
}

// Subnets returns the subnets masqueraded for the network on bridge, read
// from the table.
func Subnets(ctx context.Context, host *netns.NS, bridge string) ([]netip.Prefix, error) {
	return nft.Masqueraded(ctx, host, bridge)
}
