// Package nat gives container networks egress: their subnets are
// masqueraded (source NAT to the address of the interface a packet leaves
// by) for traffic that leaves the host through any interface but the
// network's own bridge, and forwarding is turned on, like Docker's
// MASQUERADE rule per bridge network (S3).
//
// The rules live in nsnet's own nftables table ("inet nsnet") of the host
// namespace; per-network data is set elements, so a host with 100 networks
// has the same rules as one with one. Internal networks get no egress at
// all: Masquerade refuses them, and the bridge package's isolation drops
// their traffic to other interfaces.
//
// After a firewall reload (`nft flush ruleset`), portmap.Reconcile puts the
// masquerade back together with the isolation and the published ports.
//
//	n := nat.Network{Bridge: "br-mynet", Subnets: []netip.Prefix{netip.MustParsePrefix("172.18.0.0/16")}}
//	err := nat.Masquerade(ctx, host, n)
//	...
//	err = nat.Remove(ctx, host, "br-mynet")
package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
)

// Network is a network to masquerade: its bridge in the host namespace and
// its subnets, IPv4 and IPv6.
type Network struct {
	Bridge  string
	Subnets []netip.Prefix
	// Internal networks have no egress: Masquerade refuses them.
	Internal bool
}

// ErrInternal is returned for an internal network, which has no egress.
var ErrInternal = errors.New("nat: an internal network has no egress")

// ValidationError is bad input, refused before anything is changed.
type ValidationError struct {
	Field  string
	Value  any
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("nat: %s %v: %s", e.Field, e.Value, e.Reason)
}

// Validate checks n without touching the kernel.
func (n Network) Validate() error {
	if why := ifname.Check(n.Bridge); why != "" {
		return &ValidationError{"Bridge", n.Bridge, why}
	}
	if len(n.Subnets) == 0 {
		return &ValidationError{"Subnets", n.Subnets, "none given"}
	}
	for _, p := range n.Subnets {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return &ValidationError{"Subnets", p, "not an IPv4 or IPv6 prefix"}
		}
	}
	if n.Internal {
		return ErrInternal
	}
	return nil
}

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
