//go:build !linux

package stack

import (
	"context"
	"errors"

	"github.com/nsnet/nsnet/netns"
)

// Stack needs Linux; elsewhere Open validates its input and returns an
// error matching errors.ErrUnsupported.
type Stack struct{}

func Open(ctx context.Context, host *netns.NS, cfg Config) (*Stack, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errors.ErrUnsupported
}

func (s *Stack) CreateNetwork(ctx context.Context, cfg NetworkConfig) (Network, error) {
	return Network{}, errors.ErrUnsupported
}
func (s *Stack) DeleteNetwork(ctx context.Context, name string) error { return errors.ErrUnsupported }
func (s *Stack) Networks() ([]Network, error)                         { return nil, errors.ErrUnsupported }
func (s *Stack) Run(ctx context.Context, cfg ContainerConfig) (Container, error) {
	return Container{}, errors.ErrUnsupported
}
func (s *Stack) Stop(ctx context.Context, id string) error { return errors.ErrUnsupported }
func (s *Stack) Containers() ([]Container, error)          { return nil, errors.ErrUnsupported }
func (s *Stack) Reconcile(ctx context.Context) error       { return errors.ErrUnsupported }
func (s *Stack) Close() error                              { return nil }
