//go:build !linux

package veth

import (
	"context"
	"errors"

	"github.com/nsnet/nsnet/netns"
)

// Pair needs Linux; elsewhere it validates cfg and returns an error matching
// errors.ErrUnsupported.
func Pair(ctx context.Context, ns *netns.NS, cfg Config) (Ends, error) {
	if err := cfg.Validate(); err != nil {
		return Ends{}, err
	}
	return Ends{}, errors.ErrUnsupported
}

// Delete needs Linux; elsewhere it returns an error matching
// errors.ErrUnsupported.
func Delete(ctx context.Context, ns *netns.NS, name string) error {
	return errors.ErrUnsupported
}
