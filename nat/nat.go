// Package nat gives container networks egress: their subnets are
// masqueraded (source NAT to the address of the interface a packet leaves
// by) for traffic that leaves the host through any interface but the
// network's own bridge, and forwarding is turned on, like Docker's
// MASQUERADE rule per bridge network.
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
	"errors"
	"net/netip"
	"os"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/ifname"
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

// ValidationError is bad input, refused before anything is changed: the
// one type every nsnet package returns for it.
type ValidationError = nsnet.ValidationError

// Sentinel errors, the same as every nsnet package has.
var (
	// ErrNotFound: no such network. It is os.ErrNotExist.
	ErrNotFound = os.ErrNotExist
	// ErrExists: it exists with other settings. It is os.ErrExist.
	ErrExists = os.ErrExist
	// ErrInUse: it still has users. It is nsnet.ErrInUse.
	ErrInUse = nsnet.ErrInUse
)

func invalid(field string, value any, reason string) error {
	return errs.Invalid("nat", field, value, reason)
}

// Validate checks n without touching the kernel.
func (n Network) Validate() error {
	if why := ifname.Check(n.Bridge); why != "" {
		return invalid("Network.Bridge", n.Bridge, why)
	}
	if len(n.Subnets) == 0 {
		return invalid("Network.Subnets", n.Subnets, "none given")
	}
	for _, p := range n.Subnets {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return invalid("Network.Subnets", p, "not an IPv4 or IPv6 prefix")
		}
	}
	if n.Internal {
		return ErrInternal
	}
	return nil
}
