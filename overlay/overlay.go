package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// Errors, to match with errors.Is.
var (
	// ErrExists: a network of that name or VNI exists with other settings.
	// It matches os.ErrExist.
	ErrExists = errs.New("overlay: exists with other settings", os.ErrExist)
	// ErrNotFound: no such network. It matches os.ErrNotExist.
	ErrNotFound = errs.New("overlay: not found", os.ErrNotExist)
	// ErrClosed: the Host was closed.
	ErrClosed = errors.New("overlay: host closed")
	// ErrInUse: the network still has endpoints on some host. It matches
	// nsnet.ErrInUse.
	ErrInUse = errs.New("overlay: in use", nsnet.ErrInUse)
)

// ValidationError is bad input, refused before the store or the kernel is
// touched: nsnet.ValidationError, the one type every nsnet package returns
// for it.
type ValidationError = nsnet.ValidationError

func invalid(field string, value any, reason string) *ValidationError {
	return errs.Invalid("overlay", field, value, reason)
}

// MaxVNI is the highest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// DefaultPort is the IANA VXLAN port.
const DefaultPort = 4789

// vxlanOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4 (20),
// UDP (8), VXLAN (8) and the inner Ethernet header (14) headers.
const vxlanOverhead = 50

// Config describes an overlay network, like `docker network create
// --driver overlay`: the same on every host.
type Config struct {
	// Name names the network; 1 to 64 letters, digits, '_', '.' and '-'.
	Name string
	// VNI is the VXLAN network identifier, 1 to MaxVNI.
	VNI uint32
	// Subnets with their gateways; required (the same on every host).
	Subnets []ipam.SubnetConfig
	// Port is the VXLAN UDP port; 0: DefaultPort.
	Port int
	// MTU of the containers' interfaces; 0: the underlay's MTU minus
	// VXLAN's 50 bytes, which is also the most it can be.
	MTU int `json:",omitempty"`
	// Internal networks have no egress. The others' containers reach the
	// outside through their host's gateway bridge (Docker's
	// docker_gwbridge), masqueraded.
	Internal bool `json:",omitempty"`
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	if r := names.Check(c.Name, 64); r != "" {
		return invalid("Name", c.Name, r)
	}
	if c.VNI == 0 || c.VNI > MaxVNI {
		return invalid("VNI", c.VNI, fmt.Sprintf("not within 1 and %d", MaxVNI))
	}
	if len(c.Subnets) == 0 {
		return invalid("Subnets", nil, "none given: an overlay needs the same subnets on every host")
	}
	for _, s := range c.Subnets {
		if !s.Subnet.IsValid() {
			return invalid("Subnets", s.Subnet, "not a prefix")
		}
	}
	// What the pool would refuse, refused before anything is written.
	var ve *ipam.ValidationError
	if err := (ipam.PoolConfig{Name: poolName(c.Name), Subnets: c.Subnets}).Validate(); errors.As(err, &ve) {
		return invalid("Subnets", ve.Value, ve.Field+": "+ve.Reason)
	} else if err != nil {
		return invalid("Subnets", c.Subnets, err.Error())
	}
	if c.Port < 0 || c.Port > 65535 {
		return invalid("Port", c.Port, "not a port")
	}
	if c.MTU != 0 && c.MTU < 1280 {
		return invalid("MTU", c.MTU, "under 1280")
	}
	return nil
}

// Keys in the store, under the Host's prefix:
//
//	net/NAME          a network's Config (JSON)
//	host/HOST         a host's VTEP and its last heartbeat
//	ep/NAME/HOST/ID   an endpoint: its MAC and addresses
const (
	netPrefix  = "net/"
	hostPrefix = "host/"
	epPrefix   = "ep/"
)

// hostRecord is what a host publishes of itself.
type hostRecord struct {
	VTEP netip.Addr `json:"vtep"`
	// Seen is the host's last heartbeat.
	Seen time.Time `json:"seen"`
}

// epRecord is what a host publishes of one of its endpoints.
type epRecord struct {
	Host  string       `json:"host"`
	VTEP  netip.Addr   `json:"vtep"`
	MAC   string       `json:"mac"`
	Addrs []netip.Addr `json:"addrs"`
	// Aliases are the endpoint's other names on the network.
	Aliases []string `json:"aliases,omitempty"`
	// Pending: the endpoint is being attached or detached by Host, which
	// claims its ID (and the addresses it holds) meanwhile. The other
	// hosts program nothing for it. A process killed in the middle leaves
	// the claim, by which its host's GC (or a Detach) finds what to undo.
	Pending bool `json:"pending,omitempty"`
}

func (r epRecord) mac() net.HardwareAddr {
	m, _ := net.ParseMAC(r.MAC)
	return m
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own types, which always marshal
	}
	return b
}

// ifNames are the per-host devices of a network: its bridge and its
// VXLAN device, named by the VNI so that each host finds them.
func bridgeName(vni uint32) string { return "ovbr" + strconv.FormatUint(uint64(vni), 16) }
func vxlanName(vni uint32) string  { return "ovvx" + strconv.FormatUint(uint64(vni), 16) }

func poolName(network string) string { return "overlay." + network }

// HostConfig says how a host takes part in the overlays.
type HostConfig struct {
	// NS is the host's namespace.
	NS *netns.NS
	// Name is the host's name, unique in the cluster.
	Name string
	// VTEP is the host's address on the underlay: the source of its VXLAN
	// packets, and where the other hosts send theirs. The link that has it
	// is the underlay; the overlays' MTU is derived from its MTU.
	VTEP netip.Addr
	// Store holds the control plane shared by the hosts: etcd
	// (package ipam/etcdstore) across machines; a memory or file store for hosts
	// that are namespaces of one machine.
	Store ipam.Store
	// Alloc hands out the overlays' addresses; it must be on the same
	// store, so that no two hosts give out one address.
	Alloc *ipam.Allocator
	// GatewayAlloc hands out the addresses of the host's gateway bridge,
	// which are the host's own: an allocator on a store of this host
	// (ipam.OpenFileStore). Nil: one in memory, for the process's life.
	GatewayAlloc *ipam.Allocator
	// Prefix of the control plane's keys in Store; "" is "overlay/".
	Prefix string
	// LeaseTTL is how long a host stays in the others' kernels after its
	// last heartbeat (it beats every third of it); 0 is 10 s. A host that
	// dies without Close is removed from the others after it.
	LeaseTTL time.Duration
	// Logger, if set, gets the control plane's errors.
	Logger *slog.Logger
	// DNS, if set, is the host's embedded DNS server: the host keeps in it
	// every overlay's names, its own endpoints' and the other hosts', each
	// endpoint under its ID, so that containers resolve their peers on
	// other hosts by name.
	DNS *dnsd.Server
}

// Stats are counters of the host's namespace, shared by every Host in it.
type Stats struct {
	// VXLANDropped counts the VXLAN packets dropped on the way in because
	// their sender is not a peer of the network their VNI names: not a
	// host in the store, a host without endpoints on that network, or a
	// process or container of this host.
	VXLANDropped uint64
	// VXLANEgressDropped counts the VXLAN packets that masqueraded
	// containers of this host sent to an overlay's port, dropped before
	// they left with the host's address.
	VXLANEgressDropped uint64
}

// EndpointConfig describes a container's attachment to an overlay.
type EndpointConfig struct {
	// ID names the endpoint (the container), unique in the network across
	// hosts; it owns the endpoint's addresses.
	ID string
	// NS is the container's namespace.
	NS *netns.NS
	// Aliases are other names the endpoint answers to on the network, on
	// every host (`--network-alias`), besides its ID: DNS labels.
	Aliases []string
	// IfName in the container; "" is eth0.
	IfName string
	// MAC of the container's interface; nil: random.
	MAC net.HardwareAddr
}

// Endpoint is a container's attachment to an overlay.
type Endpoint struct {
	ID     string
	IfName string
	MAC    net.HardwareAddr
	Addrs  []netip.Prefix
	MTU    int
	// Egress is the container's interface on the host's gateway bridge,
	// which gives it the default route out (Docker's docker_gwbridge); nil
	// for an internal network.
	Egress *Egress
}

// Egress is an endpoint's interface on the host's gateway bridge.
type Egress struct {
	bridge.Endpoint
	// Subnets are the gateway bridge's, with their gateways.
	Subnets []ipam.SubnetConfig
}

// ErrDrift: Check found the network or endpoint different from what its
// settings say. The error is a *DriftError naming each difference; it
// matches nsnet.ErrDrift too.
var ErrDrift = errs.New("overlay: drifted from its settings", nsnet.ErrDrift)

// A Drift is one difference Check found.
type Drift = nsnet.Drift

// DriftError is Check's error (CNI CHECK): every drift it found. It
// matches ErrDrift. It is nsnet.DriftError, the one type of every
// package's Check.
type DriftError = nsnet.DriftError

// driftError returns the *DriftError of network (and endpoint, if not "").
func driftError(network, endpoint string, ds ...Drift) *DriftError {
	return &DriftError{Pkg: "overlay", Network: network, Endpoint: endpoint, Drifts: ds, Err: ErrDrift}
}

// Live is what an orchestrator still has on one host, given to Host.GC:
// its containers' endpoints there. Everything of the overlay driver on
// that host that none of them owns is removed. There is no list of live
// networks: a network is the cluster's, defined in the store (Host.Create,
// Host.Delete), and a host keeps the devices of exactly those defined.
type Live struct {
	Endpoints []LiveEndpoint
}

// LiveEndpoint names an endpoint of a live container of the host.
type LiveEndpoint struct{ Network, ID string }

// Collected is what GC removed.
type Collected struct {
	Links     []string          // devices deleted: of no defined network, of no live endpoint, half made
	Endpoints []string          // this host's endpoint records deleted ("NET/ID"): no live endpoint
	Addresses []ipam.Allocation // allocations released: this host's, of no live endpoint
	Filters   []uint32          // VNIs whose ingress filter went: no device of theirs is left
}
