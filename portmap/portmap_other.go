//go:build !linux

package portmap

import (
	"context"
	"errors"

	"github.com/nsnet/nsnet/netns"
)

// Published ports need Linux's nftables. Elsewhere the package compiles,
// Config and Mapping validate, and every call that would need the kernel
// returns an error matching errors.ErrUnsupported.

// Mapper publishes ports; there is none off Linux.
type Mapper struct{}

func New(host *netns.NS, cfg Config) (*Mapper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errors.ErrUnsupported
}
func List(ctx context.Context, host *netns.NS) ([]Mapping, error)   { return nil, errors.ErrUnsupported }
func Reconcile(ctx context.Context, host *netns.NS, st State) error { return errors.ErrUnsupported }
func (mp *Mapper) Add(ctx context.Context, m Mapping) (Mapping, error) {
	return Mapping{}, errors.ErrUnsupported
}
func (mp *Mapper) AddAll(ctx context.Context, ms []Mapping) ([]Mapping, error) {
	return nil, errors.ErrUnsupported
}
func (mp *Mapper) Close() error                                      { return nil }
func (mp *Mapper) List(ctx context.Context) ([]Mapping, error)       { return nil, errors.ErrUnsupported }
func (mp *Mapper) Remove(ctx context.Context, m Mapping) error       { return errors.ErrUnsupported }
func (mp *Mapper) RemoveAll(ctx context.Context, ms []Mapping) error { return errors.ErrUnsupported }
func (mp *Mapper) RemoveOwner(ctx context.Context, id string) error  { return errors.ErrUnsupported }
func (mp *Mapper) Reserve(m Mapping) error                           { return errors.ErrUnsupported }
func (mp *Mapper) GC(ctx context.Context, live []string) ([]Mapping, error) {
	return nil, errors.ErrUnsupported
}
