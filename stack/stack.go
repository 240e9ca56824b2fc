package stack

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
)

var (
	// ErrNotFound: no network of that name.
	ErrNotFound = errors.New("stack: network not found")
	// ErrExists: a network or container of that name exists with other
	// settings.
	ErrExists = errors.New("stack: already exists")
	// ErrInUse: the network still has containers.
	ErrInUse = errors.New("stack: network has containers")
	// ErrClosed: the Stack was closed.
	ErrClosed = errors.New("stack: closed")
)

// Config is a host's stack.
type Config struct {
	// StateDir is where the stack keeps its state: required, absolute.
	// Created with mode 0700 if it does not exist.
	StateDir string
	// Upstreams are the DNS servers names outside the networks are
	// forwarded to; nil: the nameservers of the host's /etc/resolv.conf.
	Upstreams []netip.AddrPort
	// Domain is the DNS domain of container names; "": dnsd's default.
	Domain string
	// Logger, if set, gets the DNS server's log.
	Logger *slog.Logger
}

// NetworkConfig is a bridge network, as `docker network create` takes it.
type NetworkConfig struct {
	// Name is the network's name (1 to 64 letters, digits, '_', '.', '-').
	Name string
	// Subnets: nil takes the next free subnet of the default pools.
	Subnets []ipam.SubnetConfig
	// Internal networks have no egress (no NAT, and their DNS server
	// forwards nothing).
	Internal bool
	// DisableICC drops traffic between the network's containers.
	DisableICC bool
	// MTU: 0 is the host's default route's.
	MTU int
}

// Network is a network of the stack.
type Network struct {
	Name     string
	Bridge   string
	Subnets  []ipam.SubnetConfig // with their gateways
	Internal bool
}

// Attachment is one network of a container.
type Attachment struct {
	Network string
	// Aliases are names the container also answers to on this network
	// (`--network-alias`), besides its Name.
	Aliases []string
	// Addrs are static addresses (`--ip`); nil: the next free ones.
	Addrs []netip.Addr
	// MAC is the interface's address; nil: a random one.
	MAC net.HardwareAddr
}

// ContainerConfig is a container's networking, as `docker run` takes it.
type ContainerConfig struct {
	// ID names the container (1 to 64 letters, digits, '_', '.', '-').
	ID string
	// Name is the DNS name of the container; "": ID.
	Name string
	// NS is the container's network namespace.
	NS *netns.NS
	// Networks the container joins; the first gives its default route,
	// and published ports go to its address there.
	Networks []Attachment
	// Ports are published on the host (`-p`); CtrAddr is filled in (the
	// container's address on its first network, of HostAddr's family).
	Ports []portmap.Mapping
}

// Container is a container the stack runs.
type Container struct {
	ID   string
	Name string
	// Endpoints are the container's interfaces, one per network, in the
	// order of ContainerConfig.Networks.
	Endpoints []Endpoint
	// Ports are the published ports, with the ports chosen for
	// ephemeral ones.
	Ports []portmap.Mapping
	// Nameservers are the DNS servers for the container's resolv.conf:
	// the gateways of its networks, where the stack's DNS server listens.
	Nameservers []netip.Addr
}

// Endpoint is a container's interface on one network.
type Endpoint struct {
	Network string
	IfName  string
	MAC     net.HardwareAddr
	Addrs   []netip.Prefix
	Aliases []string
}

func invalid(field, value, reason string) error {
	return &netns.ValidationError{Pkg: "stack", Field: field, Value: value, Reason: reason}
}

// Validate checks c without touching anything.
func (c Config) Validate() error {
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return invalid("Config.StateDir", c.StateDir, "not an absolute path")
	}
	for i, u := range c.Upstreams {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsUnspecified() {
			return invalid(fmt.Sprintf("Config.Upstreams[%d]", i), u.String(), "not an address and port of a DNS server")
		}
	}
	return nil
}

// Validate checks c without touching anything (the bridge package checks
// the rest when the network is made).
func (c NetworkConfig) Validate() error {
	if r := names.Check(c.Name, 64); r != "" {
		return invalid("NetworkConfig.Name", c.Name, r)
	}
	return nil
}

// Validate checks c without touching anything.
func (c ContainerConfig) Validate() error {
	if r := names.Check(c.ID, 64); r != "" {
		return invalid("ContainerConfig.ID", c.ID, r)
	}
	if c.Name != "" {
		if r := names.Check(c.Name, 63); r != "" {
			return invalid("ContainerConfig.Name", c.Name, r)
		}
	}
	if c.NS == nil {
		return invalid("ContainerConfig.NS", "<nil>", "no container namespace")
	}
	if len(c.Networks) == 0 {
		return invalid("ContainerConfig.Networks", "[]", "no network: use bridge.None for --network none")
	}
	seen := map[string]bool{}
	for i, a := range c.Networks {
		if r := names.Check(a.Network, 64); r != "" {
			return invalid(fmt.Sprintf("ContainerConfig.Networks[%d].Network", i), a.Network, r)
		}
		if seen[a.Network] {
			return invalid(fmt.Sprintf("ContainerConfig.Networks[%d].Network", i), a.Network, "given twice")
		}
		seen[a.Network] = true
		for _, al := range a.Aliases {
			if r := names.Check(al, 63); r != "" {
				return invalid(fmt.Sprintf("ContainerConfig.Networks[%d].Aliases", i), al, r)
			}
		}
	}
	for i, m := range c.Ports {
		if m.CtrAddr.IsValid() {
			return invalid(fmt.Sprintf("ContainerConfig.Ports[%d].CtrAddr", i), m.CtrAddr.String(), "set by the stack: leave it empty")
		}
		// Any unicast address of the family stands in for the container's.
		m.CtrAddr = netip.MustParseAddr("192.0.2.1")
		if m.HostAddr.Is6() {
			m.CtrAddr = netip.MustParseAddr("2001:db8::1")
		}
		if err := m.Validate(); err != nil {
			return err
		}
	}
	return nil
}
