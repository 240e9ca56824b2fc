// Package downstream is how another module uses nsnet and tests with its
// fixtures: a small CNI-like plugin (Add, Del, Teardown) that connects the
// containers of a host to a bridge network with outbound NAT, and, in its
// tests, the same on a real kernel in nstest sandboxes, plus a three-host
// overlay on a real etcd server (netns/nstest/etcdtest).
//
// It is a module of its own (see go.mod: it requires nsnet, replaced by
// the checkout two levels up), so it builds and tests as an importer would:
//
//	cd examples/downstream && sudo go test ./...
package downstream

import (
	"context"
	"errors"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
)

// Plugin is the configuration of one bridge network of a host, as a CNI
// network configuration file would hold it.
type Plugin struct {
	Host    *netns.NS       // the host the network lives in
	Alloc   *ipam.Allocator // where container addresses come from
	Network string          // the network's name
	Subnet  netip.Prefix    // the containers' subnet
}

// network creates the bridge network and its masquerade rule, or finds
// them: both calls are idempotent.
func (p Plugin) network(ctx context.Context) (*bridge.Network, error) {
	n, err := bridge.New(ctx, p.Host, p.Alloc, bridge.Config{Name: p.Network,
		Subnets: []ipam.SubnetConfig{{Subnet: p.Subnet}}})
	if err != nil {
		return nil, err
	}
	err = nat.Masquerade(ctx, p.Host, nat.Network{Bridge: n.Config().Bridge, Subnets: []netip.Prefix{p.Subnet}})
	return n, err
}

// Add connects the container ctr, known by id, to the network (CNI ADD):
// its eth0 gets an address of the subnet and a default route via the
// bridge, and it reaches the world beyond the host through NAT. Adding
// again returns the same address.
func (p Plugin) Add(ctx context.Context, id string, ctr *netns.NS) (netip.Prefix, error) {
	n, err := p.network(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	ep, err := n.Attach(ctx, bridge.EndpointConfig{ID: id, NS: ctr, DefaultRoute: true})
	if err != nil {
		return netip.Prefix{}, err
	}
	return ep.Addrs[0], nil
}

// Del disconnects the container id (CNI DEL). Deleting what is gone, or
// from a network that does not exist, succeeds.
func (p Plugin) Del(ctx context.Context, id string) error {
	n, err := bridge.Open(ctx, p.Host, p.Alloc, p.Network)
	if errors.Is(err, netns.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return n.Detach(ctx, id)
}

// Teardown removes the network and its NAT rule, with any container still
// connected.
func (p Plugin) Teardown(ctx context.Context) error {
	n, err := bridge.Open(ctx, p.Host, p.Alloc, p.Network)
	if errors.Is(err, netns.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := nat.Remove(ctx, p.Host, n.Config().Bridge); err != nil {
		return err
	}
	return n.Delete(ctx, true)
}
