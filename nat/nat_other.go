//go:build !linux

package nat

import (
	"context"
	"errors"
	"net/netip"

	"github.com/nsnet/nsnet/netns"
)

// Masquerade needs Linux's nftables; elsewhere it returns an error matching
// errors.ErrUnsupported.
func Masquerade(ctx context.Context, host *netns.NS, n Network) error {
	if err := n.Validate(); err != nil {
		return err
	}
	return errors.ErrUnsupported
}

// Remove needs Linux's nftables; elsewhere it returns an error matching
// errors.ErrUnsupported.
func Remove(ctx context.Context, host *netns.NS, bridge string) error {
	return errors.ErrUnsupported
}

// Subnets needs Linux's nftables; elsewhere it returns an error matching
// errors.ErrUnsupported.
func Subnets(ctx context.Context, host *netns.NS, bridge string) ([]netip.Prefix, error) {
	return nil, errors.ErrUnsupported
}
