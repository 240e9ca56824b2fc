//go:build !linux

package overlay

import (
	"context"
	"errors"

	"github.com/nsnet/nsnet/netns"
)

// Overlays need Linux. Elsewhere the package compiles, Config validates,
// and every call that would need the kernel returns an error matching
// errors.ErrUnsupported.

// Host is this machine's part of the overlays; there is none off Linux.
type Host struct{}

// Network is an overlay network; there is none off Linux.
type Network struct{}

func Join(ctx context.Context, cfg HostConfig) (*Host, error) { return nil, errors.ErrUnsupported }
func (h *Host) Close(ctx context.Context) error               { return nil }
func (h *Host) Create(ctx context.Context, cfg Config) (*Network, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errors.ErrUnsupported
}
func (h *Host) Delete(ctx context.Context, name string) error { return errors.ErrUnsupported }
func (h *Host) Network(ctx context.Context, name string) (*Network, error) {
	return nil, errors.ErrUnsupported
}
func (h *Host) Stats(ctx context.Context) (Stats, error) { return Stats{}, errors.ErrUnsupported }
func (n *Network) Attach(ctx context.Context, ec EndpointConfig) (Endpoint, error) {
	return Endpoint{}, errors.ErrUnsupported
}
func (n *Network) Config() Config                              { return Config{} }
func (n *Network) Detach(ctx context.Context, id string) error { return errors.ErrUnsupported }
func (n *Network) Check(ctx context.Context) error             { return errors.ErrUnsupported }
func (n *Network) CheckEndpoint(ctx context.Context, id string, ctr *netns.NS) error {
	return errors.ErrUnsupported
}
func (h *Host) GC(ctx context.Context, live Live) (Collected, error) {
	return Collected{}, errors.ErrUnsupported
}
