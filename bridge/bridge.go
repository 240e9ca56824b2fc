package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrExists: a network or endpoint of that name exists with other
	// settings, or its bridge name is taken by a link that is not nsnet's.
	// It matches os.ErrExist.
	ErrExists = errExists{}
	// ErrNotFound: no such network or endpoint. It matches os.ErrNotExist.
	ErrNotFound = errNotFound{}
	// ErrInUse: the network still has endpoints (Delete without Force).
	// It matches nsnet.ErrInUse.
	ErrInUse = errs.New("bridge: network in use", nsnet.ErrInUse)
	// ErrOverlap: a subnet overlaps a subnet of another network of the host
	// (or another pool of the allocator). It is ipam.ErrOverlap.
	ErrOverlap = ipam.ErrOverlap
	// ErrHostMode: the container namespace is the host's own (Docker's
	// --network host): there is nothing to attach, and attaching would
	// rewire the host.
	ErrHostMode = errors.New("bridge: container uses the host's namespace (host mode): nothing to attach")
)

type errExists struct{}

func (errExists) Error() string          { return "bridge: exists with other settings" }
func (errExists) Is(target error) bool   { return target == netns.ErrExists }
func (errNotFound) Error() string        { return "bridge: not found" }
func (errNotFound) Is(target error) bool { return target == netns.ErrNotFound }

type errNotFound struct{}

// Config describes a bridge network, like the arguments of `docker network
// create --driver bridge`. The zero value with a Name is a valid network: a
// bridge br-<12 hex digits> with the next free IPv4 subnet.
type Config struct {
	// Name names the network (Docker's network name); required: 1 to 64
	// letters, digits, '_', '.' and '-', starting with a letter or digit.
	// It is written on the bridge, so a later process finds the network by
	// it, and names the network's IPAM pool, "bridge." + Name.
	Name string
	// Bridge is the bridge's interface name. Empty: "br-" followed by 12
	// hex digits derived from Name, as Docker names its bridges.
	Bridge string
	// Subnets, with their gateways (zero: the first host address),
	// ip-ranges and reserved addresses. Empty: one IPv4 subnet chosen by the
	// IPAM from its default pools, overlapping no other pool, no other
	// network of the host and no route of the host.
	Subnets []ipam.SubnetConfig
	// MTU of the bridge and of its endpoints. Zero: the MTU of the host's
	// default-route interface, or 1500 if the host has no default route.
	MTU int
	// MAC of the bridge, pinned at creation so that it does not change as
	// ports come and go. Nil: a random locally administered address.
	MAC net.HardwareAddr
	// DisableICC turns off traffic between the network's containers
	// (Docker's com.docker.network.bridge.enable_icc=false): the ports are
	// isolated on the bridge, and routed traffic from the bridge back to it
	// is dropped.
	DisableICC bool
	// Internal networks have no egress: nothing is forwarded between the
	// bridge and any other interface (docker network create --internal).
	Internal bool
	// Labels are the caller's, kept with the network (--label).
	Labels map[string]string
	// AllowRouteOverlap lets an explicit subnet overlap a route the host
	// already has (its LAN, a VPN): New refuses such a subnet otherwise,
	// since the host would route that range to the containers instead of
	// where it went. It is a check at creation only, not kept.
	AllowRouteOverlap bool
}

// Network is a bridge network of one host. Its methods are safe for
// concurrent use.
type Network struct {
	host  *netns.NS
	alloc *ipam.Allocator
	cfg   Config // as created: Bridge, Subnets (with gateways) and MTU filled in
	index int    // the bridge's ifindex
	pool  string

	madePool bool // New made the pool (and undoes it on failure)
}

// Config returns the network's settings, with what was chosen at creation
// (bridge name, subnets, gateways, MTU, MAC) filled in.
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
		return &netns.ValidationError{Pkg: "bridge", Field: "Network", Value: "<nil>", Reason: "a nil or zero Network: get one from New or Open"}
	}
	return nil
}

// EndpointConfig describes a container's attachment to a network, like
// `docker network connect` or the --network part of `docker run`.
type EndpointConfig struct {
	// ID names the endpoint, e.g. the container's ID or name; required:
	// 1 to 80 letters, digits, '_', '.' and '-', starting with a letter or
	// digit. It is the owner of the endpoint's addresses in the IPAM:
	// attaching the same ID again gives the same addresses.
	ID string
	// NS is the container's namespace. The host's own namespace is refused
	// with ErrHostMode.
	NS *netns.NS
	// IfName is the interface name in the container. Empty: eth0, or the
	// next free ethN when the container is on other networks already.
	IfName string
	// Addrs are static addresses (docker run --ip, --ip6), at most one per
	// subnet of the network. The rest are allocated.
	Addrs []netip.Addr
	// MAC of the container's interface. Nil: random, locally administered.
	MAC net.HardwareAddr
	// DefaultRoute installs the container's default route via the
	// network's gateway. A container on several networks gets its default
	// route from the endpoint with the highest GatewayPriority among those
	// marked (Docker's gw-priority): each installs its default route with a
	// metric derived from the priority, so when one goes, the next takes
	// over.
	DefaultRoute    bool
	GatewayPriority int
}

// Endpoint is a container's attachment to a network.
type Endpoint struct {
	ID      string
	Network string
	// NS is the container's namespace, when known (nil for endpoints found
	// by Inspect, which sees them from the host).
	NS *netns.NS
	// IfName, MAC: the container's interface.
	IfName string
	MAC    net.HardwareAddr
	// Addrs are the container's addresses with their prefix lengths.
	Addrs []netip.Prefix
	// HostVeth is the host-side end of the veth pair, a port of the bridge.
	HostVeth     string
	DefaultRoute bool
	// Since is when the endpoint's addresses were allocated, if the IPAM
	// knows.
	Since time.Time
}

// Info is what Inspect and List report of a network.
type Info struct {
	Config
	// Index is the bridge's interface index.
	Index int
	// Endpoints are the containers attached, read from the bridge's ports.
	Endpoints []Endpoint
}

// Validate reports what is wrong with c before anything is touched. Bad
// subnets are found by ipam's rules (a gateway or ip-range outside its
// subnet, host bits set, too small to hold a container, overlapping each
// other) and reported, like the rest, as a *netns.ValidationError.
func (c Config) Validate() error {
	bad := func(field, value, reason string) error {
		return &netns.ValidationError{Pkg: "bridge", Field: field, Value: value, Reason: reason}
	}
	if r := names.Check(c.Name, 64); r != "" {
		return bad("Config.Name", c.Name, r)
	}
	if c.Bridge != "" {
		if r := ifname.Check(c.Bridge); r != "" {
			return bad("Config.Bridge", c.Bridge, r)
		}
	}
	if err := (ipam.PoolConfig{Name: poolName(c.Name), Subnets: c.Subnets}).Validate(); err != nil {
		var ve *ipam.ValidationError
		if errors.As(err, &ve) {
			return bad(strings.Replace(ve.Field, "PoolConfig.", "Config.", 1), ve.Value, ve.Reason)
		}
		return err
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return bad("Config.MTU", fmt.Sprint(c.MTU), "not between 68 and 65535")
	}
	if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 != 0) {
		return bad("Config.MAC", c.MAC.String(), "not a unicast Ethernet address")
	}
	if _, err := encodeMark(c.mark()); err != nil {
		return bad("Config.Labels", fmt.Sprint(c.Labels), "too long to keep with the network: "+err.Error())
	}
	return nil
}

// poolName is the IPAM pool of a network.
func poolName(network string) string { return "bridge." + network }

// BridgeName returns the bridge interface name a network called name gets
// when Config.Bridge is empty: "br-" and 12 hex digits of a hash of the
// name (Docker uses its network ID the same way).
func BridgeName(name string) string {
	sum := sha256.Sum256([]byte("nsnet/bridge/" + name))
	return "br-" + hex.EncodeToString(sum[:])[:12]
}

func (c Config) mark() netMark {
	return netMark{Kind: markerBridge, Name: c.Name, Internal: c.Internal, DisableICC: c.DisableICC, Labels: c.Labels}
}

// baseMetric is the metric of a default route with GatewayPriority 0; a
// higher priority gives a lower metric, which the kernel prefers.
const baseMetric = 10000

// Validate reports what is wrong with c before anything is touched.
func (c EndpointConfig) Validate() error {
	bad := func(field, value, reason string) error {
		return &netns.ValidationError{Pkg: "bridge", Field: field, Value: value, Reason: reason}
	}
	if len(c.ID) > 80 {
		return bad("EndpointConfig.ID", c.ID, "longer than 80 bytes")
	}
	if r := names.Check(c.ID, 64); r != "" {
		return bad("EndpointConfig.ID", c.ID, r)
	}
	if c.NS == nil {
		return bad("EndpointConfig.NS", "<nil>", "no container namespace")
	}
	if c.IfName != "" {
		if r := ifname.Check(c.IfName); r != "" {
			return bad("EndpointConfig.IfName", c.IfName, r)
		}
	}
	if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 != 0) {
		return bad("EndpointConfig.MAC", c.MAC.String(), "not a unicast Ethernet address")
	}
	if c.GatewayPriority < -baseMetric+1 || c.GatewayPriority > baseMetric {
		return bad("EndpointConfig.GatewayPriority", strconv.Itoa(c.GatewayPriority), fmt.Sprintf("not within ±%d", baseMetric-1))
	}
	for _, a := range c.Addrs {
		if !a.IsValid() {
			return bad("EndpointConfig.Addrs", a.String(), "not an address")
		}
	}
	return nil
}

// ErrDrift: Check found the network or endpoint different from what its
// settings say. The error is a *DriftError naming each difference; it
// matches nsnet.ErrDrift too.
var ErrDrift = errs.New("bridge: drifted from its settings", nsnet.ErrDrift)

// A Drift is one difference Check found.
type Drift = nsnet.Drift

// DriftError is Check's error (CNI CHECK): every drift it found. It
// matches ErrDrift. It is nsnet.DriftError, the one type of every
// package's Check.
type DriftError = nsnet.DriftError

// driftError returns the *DriftError of network (and endpoint, if not "").
func driftError(network, endpoint string, ds ...Drift) *DriftError {
	return &DriftError{Pkg: "bridge", Network: network, Endpoint: endpoint, Drifts: ds, Err: ErrDrift}
}

// Live is what an orchestrator still has, given to GC: its networks and
// its containers' endpoints. Everything of nsnet's bridge driver in the
// host that none of these owns is removed.
type Live struct {
	// Networks by name. Nil: every network that exists is live (only
	// endpoints and debris are collected).
	Networks []string
	// Endpoints as network name and endpoint ID.
	Endpoints []LiveEndpoint
}

// LiveEndpoint names an endpoint of a live container.
type LiveEndpoint struct{ Network, ID string }

// Collected is what GC removed.
type Collected struct {
	Networks  []string          // networks deleted (not live)
	Links     []string          // bridges and host veths deleted: half made, or of no live owner
	Pools     []string          // pools deleted: no network and not live
	Addresses []ipam.Allocation // allocations released: no live endpoint
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
