package macvlan

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrExists: a network or endpoint of that name exists with other
	// settings, or a name is taken by a link that is not nsnet's. It
	// matches os.ErrExist.
	ErrExists = errExists{}
	// ErrNotFound: no such network, endpoint or parent interface. It
	// matches os.ErrNotExist.
	ErrNotFound = errNotFound{}
	// ErrInUse: the network still has endpoints (Delete without force), or
	// the parent is taken: a passthru network (or any passthru macvlan)
	// holds it, a passthru network already has its container, or a
	// passthru network is asked for on a parent that other macvlans use.
	ErrInUse = errs.New("macvlan: in use", nsnet.ErrInUse)
	// ErrOverlap: a subnet overlaps a subnet of another network of the host
	// (or another pool of the allocator). It is ipam.ErrOverlap.
	ErrOverlap = ipam.ErrOverlap
	// ErrHostMode: the container namespace is the host's own. A macvlan
	// interface for the host is the shim: see Network.AddShim.
	ErrHostMode = errors.New("macvlan: container uses the host's namespace (host mode): use the shim for the host")
)

type errExists struct{}

func (errExists) Error() string        { return "macvlan: exists with other settings" }
func (errExists) Is(target error) bool { return target == netns.ErrExists }

type errNotFound struct{}

func (errNotFound) Error() string        { return "macvlan: not found" }
func (errNotFound) Is(target error) bool { return target == netns.ErrNotFound }

// Mode is the macvlan mode of a network's interfaces: how containers on one
// parent reach each other (`ip link add ... type macvlan mode MODE`).
type Mode string

const (
	// ModeBridge (the zero Mode, as in Docker): containers on one parent
	// talk to each other directly, inside the host; everything else goes
	// out through the parent.
	ModeBridge Mode = "bridge"
	// ModePrivate: containers on one parent cannot talk to each other at
	// all, not even through a switch that sends frames back (hairpin).
	ModePrivate Mode = "private"
	// ModeVEPA: every frame goes out through the parent; containers on
	// one parent talk only if the switch sends their frames back
	// (802.1Qbg reflective relay, a bridge port in hairpin mode).
	ModeVEPA Mode = "vepa"
	// ModePassthru: one container takes the parent whole (its MAC, and
	// promiscuous mode). A network in this mode has at most one container,
	// and no other network may use its parent.
	ModePassthru Mode = "passthru"
)

// Config describes a macvlan network, like the arguments of `docker network
// create --driver macvlan`. The zero value with a Name and a Parent is a
// valid network: bridge mode, the parent's MTU and the next free IPv4
// subnet of the allocator.
type Config struct {
	// Name names the network (Docker's network name); required: 1 to 64
	// letters, digits, '_', '.' and '-', starting with a letter or digit.
	// It is written on the network's anchor interface in the host, so that
	// a later process finds the network by it, and names the network's
	// IPAM pool, "macvlan." + Name.
	Name string
	// Parent is the host interface the containers' interfaces sit on
	// (Docker's -o parent=eth0); required. It must exist and be up, and is
	// never changed by nsnet.
	Parent string
	// Mode of the network's interfaces. Zero: ModeBridge.
	Mode Mode
	// Subnets, with their gateways (zero: the first host address),
	// ip-ranges and reserved addresses. For a macvlan network these are
	// usually the subnet and router of the parent's LAN. Empty: one IPv4
	// subnet chosen by the IPAM, overlapping no other pool and no other
	// network of the host.
	Subnets []ipam.SubnetConfig
	// MTU of the containers' interfaces (Docker's -o mtu=). Zero: the
	// parent's. More than the parent's is refused.
	MTU int
	// Labels are the caller's, kept with the network (--label).
	Labels map[string]string
}

// Network is a macvlan network of one host. Its methods are safe for
// concurrent use.
//
// In the kernel, a network is its anchor: a macvlan interface on the parent
// in the host namespace, named [AnchorName], down unless it serves as the
// host's shim ([Network.AddShim]), carrying nsnet's mark. A passthru
// network's anchor is a passthru macvlan that holds the parent for the
// network while no container does; it is deleted when the container's
// interface takes the parent, and made again when that goes.
type Network struct {
	host   *netns.NS
	alloc  *ipam.Allocator
	cfg    Config // as created: Mode, Subnets (with gateways) and MTU filled in
	parent int    // the parent's ifindex
	pool   string
	anchor string

	state *netState
}

// Config returns the network's settings, with what was chosen at creation
// (mode, subnets, gateways, MTU) filled in.
func (n *Network) Config() Config {
	if n == nil {
		return Config{}
	}
	return n.cfg
}

// Host returns the namespace the network lives in.
func (n *Network) Host() *netns.NS {
	if n == nil {
		return nil
	}
	return n.host
}

// usable returns a *netns.ValidationError for a nil or zero Network.
func (n *Network) usable() error {
	if n == nil || n.host == nil || n.alloc == nil {
		return &netns.ValidationError{Pkg: "macvlan", Field: "Network", Value: "<nil>", Reason: "a nil or zero Network: get one from New or Open"}
	}
	return nil
}

// EndpointConfig describes a container's interface on a network, like
// `docker network connect` or the --network part of `docker run`.
type EndpointConfig struct {
	// ID names the endpoint, e.g. the container's ID or name; required:
	// 1 to 80 letters, digits, '_', '.' and '-', starting with a letter or
	// digit. It is the owner of the endpoint's addresses in the IPAM, and
	// is written on the container's interface.
	ID string
	// NS is the container's namespace; required. The host's own namespace
	// is refused with ErrHostMode. The Network remembers it (without owning
	// it: closing it is the caller's) so that Detach and Delete can reach
	// the interface.
	NS *netns.NS
	// IfName is the interface name in the container. Empty: eth0, or the
	// next free ethN when the container is on other networks already.
	IfName string
	// Addrs are static addresses (docker run --ip, --ip6), at most one per
	// IP family, each a host address of a subnet of the network. The rest
	// are allocated. Hosts that share a segment but not an allocator must
	// give static addresses.
	Addrs []netip.Addr
	// MAC of the container's interface. Nil: random, locally administered.
	// A passthru interface has its parent's MAC, and a MAC given is refused.
	MAC net.HardwareAddr
	// MTU of the interface. Zero: the network's. More than the parent's is
	// refused.
	MTU int
	// DefaultRoute installs the container's default route via the
	// network's gateway, with a metric derived from GatewayPriority as the
	// bridge package does, so that a container on a bridge network as well
	// takes its default route from the endpoint of higher priority.
	DefaultRoute    bool
	GatewayPriority int
}

// Endpoint is a container's interface on a network.
type Endpoint struct {
	ID      string
	Network string
	// NS is the container's namespace, when known (nil for endpoints that
	// another process attached: they are seen through the IPAM).
	NS *netns.NS
	// IfName, MAC: the container's interface, when NS is known.
	IfName string
	MAC    net.HardwareAddr
	// Addrs are the container's addresses with their prefix lengths.
	Addrs        []netip.Prefix
	DefaultRoute bool
	// Since is when the endpoint's addresses were allocated, if the IPAM
	// knows.
	Since time.Time
}

// ShimConfig describes the host's shim: a macvlan interface of the host on
// the network's parent, the way the macvlan guides work around the host not
// reaching its own containers (`ip link add mv-shim link eth0 type macvlan
// mode bridge; ip addr add ADDR/32 dev mv-shim; ip route add ROUTE dev
// mv-shim`).
type ShimConfig struct {
	// Addr is the host's address on the shim, a host address of a subnet of
	// the network; required. It is reserved in the network's pool, so that
	// no container gets it, and added with a full-length prefix (/32,
	// /128), so that the host does not take the whole subnet for itself.
	Addr netip.Addr
	// Routes lead to the containers through the shim, from Addr: the
	// addresses of this host's containers, a range holding them, or the
	// whole subnet (which also reaches containers of other hosts on the
	// segment through the shim). Each must lie in a subnet of the network.
	// Empty: the network's subnets of Addr's family.
	Routes []netip.Prefix
}

// Shim is the host's shim as it exists.
type Shim struct {
	// Name and Index of the interface: the network's anchor, set up.
	Name  string
	Index int
	// Addr is the host's address on it, with its prefix length.
	Addr netip.Prefix
	// Routes go to the containers through the shim.
	Routes []netip.Prefix
}

// Info is what Inspect and List report of a network.
type Info struct {
	Config
	// Index is the anchor's interface index; 0 when it is not there (a
	// passthru network whose container holds the parent).
	Index int
	// Endpoints are the containers attached, read from the IPAM (and
	// their interfaces, where the Network knows their namespaces).
	Endpoints []Endpoint
	// Shim is the host's shim, nil if it has none.
	Shim *Shim

	parent      int  // the parent's ifindex
	poolMissing bool // the anchor is there, the pool is not
}

// Live is what an orchestrator still has, given to GC: its networks and
// its containers' endpoints. Everything of nsnet's macvlan driver that
// none of these owns is removed.
type Live struct {
	// Networks by name. Nil: every network that exists is live (only
	// endpoints and debris are collected).
	Networks []string
	// Endpoints of live containers.
	Endpoints []LiveEndpoint
	// Namespaces of live containers (besides those of Endpoints): GC
	// removes there the interfaces of this driver that no live endpoint
	// owns, such as one an Attach killed half way left.
	Namespaces []*netns.NS
}

// LiveEndpoint names an endpoint of a live container: its network, its ID,
// and, if known, the container's namespace (where GC also removes the
// network's interfaces that no live endpoint owns, and half-made ones).
type LiveEndpoint struct {
	Network, ID string
	NS          *netns.NS
}

// Collected is what GC removed.
type Collected struct {
	Networks  []string          // networks deleted (not live)
	Links     []string          // anchors and container interfaces deleted
	Pools     []string          // pools deleted: no network and not live
	Addresses []ipam.Allocation // allocations released: no live endpoint
}

// ErrDrift: Check found the network or endpoint different from what its
// settings say. The error is a *DriftError naming each difference; it
// matches nsnet.ErrDrift too.
var ErrDrift = errs.New("macvlan: drifted from its settings", nsnet.ErrDrift)

// A Drift is one difference Check found.
type Drift = nsnet.Drift

// DriftError is Check's error (CNI CHECK): every drift it found. It
// matches ErrDrift. It is nsnet.DriftError, the one type of every
// package's Check.
type DriftError = nsnet.DriftError

// driftError returns the *DriftError of network (and endpoint, if not "").
func driftError(network, endpoint string, ds ...Drift) *DriftError {
	return &DriftError{Pkg: "macvlan", Network: network, Endpoint: endpoint, Drifts: ds, Err: ErrDrift}
}

// sentinel makes an error that the kernel, a library or the IPAM answered
// match the package's sentinel for it as well: what exists matches
// ErrExists, what is missing ErrNotFound. Its message stays; nil and
// other errors are returned as they are. The exported calls return
// through it, so no raw errno is all a caller can match.
func sentinel(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrExist) && !errors.Is(err, ErrExists):
		return &sentinelError{err, ErrExists}
	case errors.Is(err, os.ErrNotExist) && !errors.Is(err, ErrNotFound):
		return &sentinelError{err, ErrNotFound}
	}
	return err
}

type sentinelError struct{ err, sentinel error }

func (e *sentinelError) Error() string   { return e.err.Error() }
func (e *sentinelError) Unwrap() []error { return []error{e.err, e.sentinel} }
