//go:build !linux

package macvlan

import (
	"context"
	"errors"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// macvlan networks need Linux. Elsewhere the package compiles, Config and
// EndpointConfig validate, and every call that would need the kernel
// returns an error matching errors.ErrUnsupported.

type netState struct{}

func New(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, cfg Config) (*Network, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errors.ErrUnsupported
}

func Open(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, name string) (*Network, error) {
	return nil, errors.ErrUnsupported
}

func List(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) ([]Info, error) {
	return nil, errors.ErrUnsupported
}

func (n *Network) Inspect(ctx context.Context) (Info, error)    { return Info{}, errors.ErrUnsupported }
func (n *Network) Delete(ctx context.Context, force bool) error { return errors.ErrUnsupported }
func (n *Network) RemoveShim(ctx context.Context) error         { return errors.ErrUnsupported }

func (n *Network) Detach(ctx context.Context, id string, ctr *netns.NS) error {
	return errors.ErrUnsupported
}

func (n *Network) AddShim(ctx context.Context, cfg ShimConfig) (Shim, error) {
	return Shim{}, errors.ErrUnsupported
}

func (n *Network) Attach(ctx context.Context, ep EndpointConfig) (Endpoint, error) {
	if err := ep.Validate(); err != nil {
		return Endpoint{}, err
	}
	return Endpoint{}, errors.ErrUnsupported
}

func GC(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, live Live) (Collected, error) {
	return Collected{}, errors.ErrUnsupported
}

func (n *Network) Check(ctx context.Context) error { return errors.ErrUnsupported }

func (n *Network) CheckEndpoint(ctx context.Context, id string, ctr *netns.NS) error {
	return errors.ErrUnsupported
}
