package dnsd

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/netns"
)

// Defaults of Config's zero fields.
const (
	DefaultTTL          = 600 * time.Second
	DefaultDomain       = "nsnet.internal."
	DefaultMaxForwards  = 1024
	DefaultClientFwds   = 64
	DefaultMaxTCPConns  = 1024
	DefaultTimeout      = 2 * time.Second
	DefaultTCPIdle      = 10 * time.Second
	DefaultResolvConf   = "/etc/resolv.conf"
	DefaultContainerDNS = "127.0.0.11"
)

// Errors. They match errors.Is.
var (
	// ErrNotFound: no network of that name.
	ErrNotFound = os.ErrNotExist
	// ErrExists: a network of that name with other settings.
	ErrExists = os.ErrExist
	// ErrInUse: the module-wide in-use sentinel, nsnet.ErrInUse.
	ErrInUse = nsnet.ErrInUse
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("dnsd: server closed")
)

// A ValidationError says which argument is wrong and why:
// nsnet.ValidationError, the one type every nsnet package returns for bad
// input.
type ValidationError = nsnet.ValidationError

// invalid is dnsd's *ValidationError; the reason quotes the value where it
// matters.
func invalid(field, reason string) *ValidationError {
	return &ValidationError{Pkg: "dnsd", Field: field, Reason: reason}
}

// Config configures a Server. The zero value (with NS set) is usable.
type Config struct {
	// NS is the host namespace: forwarded queries leave from it, whatever
	// namespace the query arrived in. Required when any upstream is used.
	NS *netns.NS
	// Upstreams are the resolvers that names not served locally are
	// forwarded to, tried in order. Nil: the nameservers of ResolvConf,
	// less loopback ones (a container cannot reach the host's loopback),
	// port 53. An empty non-nil slice forwards nothing (SERVFAIL).
	Upstreams []netip.AddrPort
	// ResolvConf is the file read when Upstreams is nil. Empty:
	// /etc/resolv.conf.
	ResolvConf string
	// Domain is the networks' own domain: a name registered as "web" is
	// also "web.<Domain>". Names under it, and single-label names, are
	// answered locally and never forwarded. Empty: "nsnet.internal.".
	Domain string
	// TTL of local answers. Zero: 600 s (as Docker). Rounded to seconds.
	TTL time.Duration
	// MaxForwards bounds forwarded queries in flight; past it a query that
	// would be forwarded gets SERVFAIL at once. Zero: 1024 (as Docker).
	MaxForwards int
	// MaxClientForwards bounds one client's forwarded queries in flight
	// (a client: a source address, or a container listener's container),
	// so that one client's slow names cannot take every slot of
	// MaxForwards from the others; past it that client's query gets
	// SERVFAIL at once. Zero: 64, or MaxForwards if lower.
	MaxClientForwards int
	// MaxTCPConns bounds open TCP connections per listener; a connection
	// past it is closed at once. Zero: 1024.
	MaxTCPConns int
	// Timeout bounds each attempt at one upstream (UDP, and TCP after a
	// truncated UDP answer). Zero: 2 s.
	Timeout time.Duration
	// TCPIdle bounds how long a TCP connection may take to send the next
	// query (all of it) and to take an answer; then it is closed.
	// Zero: 10 s.
	TCPIdle time.Duration
	// UDPReaders is the number of goroutines reading each UDP socket.
	// Zero: 4.
	UDPReaders int
	// AnswerHost makes the host namespace of ListenHost listeners a
	// client: a query from the host itself (one that arrived on loopback)
	// is answered as from its source address (a gateway's: that network's
	// names), and forwarded. False: the host gets REFUSED, as any stranger.
	AnswerHost bool
	// Logger gets forwarding failures and listener errors. Nil: none.
	Logger *slog.Logger
}

// Endpoint is one container on a network, as the DNS server knows it.
type Endpoint struct {
	// Name is the container's name, unique on the network: registering it
	// again replaces the entry. Case-insensitive; a single DNS label.
	Name string
	// Aliases are more names (docker run --network-alias). Several
	// endpoints may share an alias: it answers with all their addresses,
	// rotated.
	Aliases []string
	// Addrs are the endpoint's addresses on the network, IPv4 and IPv6.
	Addrs []netip.Addr
}

// Server is an embedded DNS server serving many networks. It is safe for
// concurrent use: Register and Unregister take effect for the next query.
type Server struct {
	cfg   Config
	ttl   uint32
	log   *slog.Logger
	fwdMu sync.Mutex
	fwdN  int                // forwarded queries in flight
	fwdBy map[netip.Addr]int // of them, by client
	stats counters

	sockMu       sync.Mutex
	socks        *sockets // upstream sockets made ahead, once forwarding starts
	socksStopped bool

	mu        sync.RWMutex
	nets      []*network // in AddNetwork order
	closed    bool
	listeners map[*Listener]struct{}
}

type network struct {
	name     string
	subnets  []netip.Prefix
	internal bool
	ifaces   []string              // its interfaces in ListenHost listeners' namespaces
	eps      map[string]Endpoint   // by lower-case name
	names    map[string]*entry     // lower-case FQDN
	ptr      map[netip.Addr]string // address -> FQDN of its endpoint
}

type entry struct {
	addrs []netip.Addr
	rr    atomic.Uint32
}

// New returns a server with no networks and no listener.
func New(cfg Config) (*Server, error) {
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	cfg.Domain = strings.ToLower(dns.Fqdn(cfg.Domain))
	if !validDomain(cfg.Domain) {
		return nil, invalid("Config.Domain", fmt.Sprintf("%q is not a domain name", cfg.Domain))
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return nil, invalid("Config.TTL", "negative")
	}
	if cfg.MaxForwards == 0 {
		cfg.MaxForwards = DefaultMaxForwards
	}
	if cfg.MaxClientForwards == 0 {
		cfg.MaxClientForwards = min(DefaultClientFwds, cfg.MaxForwards)
	}
	if cfg.MaxTCPConns == 0 {
		cfg.MaxTCPConns = DefaultMaxTCPConns
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.TCPIdle == 0 {
		cfg.TCPIdle = DefaultTCPIdle
	}
	if cfg.UDPReaders == 0 {
		cfg.UDPReaders = 4
	}
	if cfg.MaxForwards < 0 || cfg.MaxClientForwards < 0 || cfg.MaxTCPConns < 0 || cfg.Timeout < 0 || cfg.TCPIdle < 0 || cfg.UDPReaders < 0 {
		return nil, invalid("Config", "negative limit")
	}
	if cfg.Upstreams == nil {
		path := cfg.ResolvConf
		if path == "" {
			path = DefaultResolvConf
		}
		ups, err := DefaultUpstreams(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		cfg.Upstreams = append([]netip.AddrPort{}, ups...)
	}
	for i, u := range cfg.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, invalid(fmt.Sprintf("Config.Upstreams[%d]", i), "invalid address")
		}
		// 0.0.0.0 and :: are "this host": the server itself, a loop.
		if u.Addr().IsUnspecified() {
			return nil, invalid(fmt.Sprintf("Config.Upstreams[%d]", i), "the unspecified address is the server itself")
		}
	}
	if len(cfg.Upstreams) > 0 && cfg.NS == nil {
		return nil, invalid("Config.NS", "required to forward to upstreams")
	}
	cfg.Upstreams = slices.Clone(cfg.Upstreams)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ttl := uint32(cfg.TTL / time.Second)
	return &Server{cfg: cfg, ttl: ttl, log: log, fwdBy: map[netip.Addr]int{}, listeners: map[*Listener]struct{}{}}, nil
}

// DefaultUpstreams returns the nameservers of the resolv.conf file at path,
// port 53, less loopback ones (127.0.0.0/8, ::1: a container cannot reach
// the host's loopback), as Docker and Podman do.
func DefaultUpstreams(path string) ([]netip.AddrPort, error) {
	rc, err := ReadResolvConf(path)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, a := range rc.Nameservers {
		if !a.IsLoopback() && !a.IsUnspecified() {
			out = append(out, netip.AddrPortFrom(a, 53))
		}
	}
	return out, nil
}

// Upstreams returns the resolvers the server forwards to.
func (s *Server) Upstreams() []netip.AddrPort {
	if s.usable() != nil {
		return nil
	}
	return slices.Clone(s.cfg.Upstreams)
}

// usable returns a *ValidationError for a nil Server or one not made by New.
func (s *Server) usable() error {
	if s == nil || s.listeners == nil {
		return invalid("Server", "nil, or not made by New")
	}
	return nil
}

// Domain returns the networks' domain, e.g. "nsnet.internal.".
func (s *Server) Domain() string {
	if s.usable() != nil {
		return ""
	}
	return s.cfg.Domain
}

// AddNetwork adds a network: clients whose source address is in one of its
// subnets get its names. Internal networks get no forwarding.
//
// ifaces are the network's interfaces in the namespace of ListenHost
// listeners (a bridge network's bridge, bridge.Config.Bridge): a
// ListenHost listener answers a source address of the network only when
// the query arrived on one of them, so that a source address is never
// taken on trust (RELIABILITY rule 15). A network with none is served to
// ListenContainer listeners only.
//
// Adding a network that exists with the same settings succeeds; with
// other settings it fails with ErrExists.
func (s *Server) AddNetwork(name string, subnets []netip.Prefix, internal bool, ifaces ...string) error {
	if err := s.usable(); err != nil {
		return err
	}
	if name == "" {
		return invalid("name", "empty")
	}
	if len(subnets) == 0 {
		return invalid("subnets", "none")
	}
	ifaces = slices.Clone(ifaces)
	for i, n := range ifaces {
		if n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n\x00") {
			return invalid(fmt.Sprintf("ifaces[%d]", i), fmt.Sprintf("%q is not an interface name", n))
		}
	}
	slices.Sort(ifaces)
	ifaces = slices.Compact(ifaces)
	subs := make([]netip.Prefix, len(subnets))
	for i, p := range subnets {
		if !p.IsValid() {
			return invalid(fmt.Sprintf("subnets[%d]", i), "invalid prefix")
		}
		subs[i] = p.Masked()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, n := range s.nets {
		if n.name == name {
			if n.internal == internal && slices.Equal(n.subnets, subs) && slices.Equal(n.ifaces, ifaces) {
				return nil
			}
			return fmt.Errorf("dnsd: network %q: %w with other settings", name, ErrExists)
		}
	}
	s.nets = append(s.nets, &network{name: name, subnets: subs, internal: internal, ifaces: ifaces,
		eps: map[string]Endpoint{}, names: map[string]*entry{}, ptr: map[netip.Addr]string{}})
	return nil
}

// RemoveNetwork removes a network and its names. Removing one that is not
// there succeeds.
func (s *Server) RemoveNetwork(name string) error {
	if err := s.usable(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nets = slices.DeleteFunc(s.nets, func(n *network) bool { return n.name == name })
	return nil
}

func (s *Server) network(name string) (*network, error) {
	if s.closed {
		return nil, ErrClosed
	}
	for _, n := range s.nets {
		if n.name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("dnsd: network %q: %w", name, ErrNotFound)
}

// validLabel reports whether l is a host name label (RFC 1035, 1123): 1
// to 63 letters, digits and hyphens, neither first nor last a hyphen; and
// '_', which Docker's container names hold (compose's "app_web_1").
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validDomain reports whether d, a fully qualified name, is labels that
// validLabel takes, 255 bytes at most; the root alone is not.
func validDomain(d string) bool {
	if d == "." || len(d) > 255 || !strings.HasSuffix(d, ".") {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(d, "."), ".") {
		if !validLabel(l) {
			return false
		}
	}
	return true
}

// Register adds ep to network, replacing an endpoint of the same name.
func (s *Server) Register(network string, ep Endpoint) error {
	if err := s.usable(); err != nil {
		return err
	}
	if !validLabel(ep.Name) {
		return invalid("Endpoint.Name", fmt.Sprintf("%q is not a DNS label", ep.Name))
	}
	for i, a := range ep.Aliases {
		if !validLabel(a) {
			return invalid(fmt.Sprintf("Endpoint.Aliases[%d]", i), fmt.Sprintf("%q is not a DNS label", a))
		}
	}
	ep.Aliases = slices.Clone(ep.Aliases)
	ep.Addrs = slices.Clone(ep.Addrs)
	for i, a := range ep.Addrs {
		if !a.IsValid() {
			return invalid(fmt.Sprintf("Endpoint.Addrs[%d]", i), "invalid address")
		}
		ep.Addrs[i] = a.Unmap()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.network(network)
	if err != nil {
		return err
	}
	key := strings.ToLower(ep.Name)
	if old, ok := n.eps[key]; ok {
		s.unregister(n, old)
	}
	n.eps[key] = ep
	fqdn := key + "." + s.cfg.Domain
	for _, name := range append([]string{ep.Name}, ep.Aliases...) {
		for _, k := range s.keys(name) {
			e := n.names[k]
			if e == nil {
				e = &entry{}
				n.names[k] = e
			}
			// A new slice: readers may hold the old one.
			e.addrs = append(slices.Clip(e.addrs), ep.Addrs...)
		}
	}
	for _, a := range ep.Addrs {
		n.ptr[a] = fqdn
	}
	return nil
}

func (s *Server) keys(label string) [2]string {
	l := strings.ToLower(label) + "."
	return [2]string{l, l + s.cfg.Domain}
}

// Unregister removes the endpoint named name from network. Removing one
// that is not there, or from a network that is gone, succeeds.
func (s *Server) Unregister(network, name string) error {
	if err := s.usable(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.network(network)
	if errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	key := strings.ToLower(name)
	if old, ok := n.eps[key]; ok {
		s.unregister(n, old)
		delete(n.eps, key)
	}
	return nil
}

func (s *Server) unregister(n *network, ep Endpoint) {
	for _, name := range append([]string{ep.Name}, ep.Aliases...) {
		for _, k := range s.keys(name) {
			e := n.names[k]
			if e == nil {
				continue
			}
			left := make([]netip.Addr, 0, len(e.addrs))
			drop := slices.Clone(ep.Addrs)
			for _, a := range e.addrs {
				if i := slices.Index(drop, a); i >= 0 {
					drop = slices.Delete(drop, i, i+1)
					continue
				}
				left = append(left, a)
			}
			if len(left) == 0 {
				delete(n.names, k)
			} else {
				e.addrs = left
			}
		}
	}
	fqdn := strings.ToLower(ep.Name) + "." + s.cfg.Domain
	for _, a := range ep.Addrs {
		if n.ptr[a] != fqdn {
			continue
		}
		delete(n.ptr, a)
		// Another endpoint with the address (one that took it over
		// from a container that is gone) names it now.
		for k, other := range n.eps {
			if k != strings.ToLower(ep.Name) && slices.Contains(other.Addrs, a) {
				n.ptr[a] = k + "." + s.cfg.Domain
				break
			}
		}
	}
}

// Live is what an orchestrator still has, given to GC: its networks and
// its containers' endpoints, as bridge.Live is for bridge.GC.
type Live struct {
	// Networks by name. Nil: every network of the server is live (only
	// endpoints are collected).
	Networks []string
	// Endpoints as network name and endpoint name (Endpoint.Name,
	// case-insensitive).
	Endpoints []LiveEndpoint
}

// LiveEndpoint names an endpoint of a live container.
type LiveEndpoint struct{ Network, Name string }

// Collected is what GC removed.
type Collected struct {
	Networks  []string       // networks removed (not live), with their names
	Endpoints []LiveEndpoint // endpoints unregistered from live networks
}

// GC removes every network that is not live and every endpoint of the
// live networks that is not live, in one step that queries see whole: a
// daemon's server outlives the orchestrator that registers names, so
// after the orchestrator's crash and restart this is the call that drops
// the names of containers that went meanwhile. An alias shared by live
// and gone endpoints keeps the live ones' addresses; the PTR records of
// the gone go (an address that a live endpoint holds too is then its).
// Calling it again with the same live set removes nothing.
func (s *Server) GC(live Live) (Collected, error) {
	var out Collected
	if err := s.usable(); err != nil {
		return out, err
	}
	liveEP := make(map[LiveEndpoint]bool, len(live.Endpoints))
	for _, e := range live.Endpoints {
		liveEP[LiveEndpoint{e.Network, strings.ToLower(e.Name)}] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return out, ErrClosed
	}
	keep := s.nets[:0:0]
	for _, n := range s.nets {
		if live.Networks != nil && !slices.Contains(live.Networks, n.name) {
			out.Networks = append(out.Networks, n.name)
			continue
		}
		keep = append(keep, n)
		for _, key := range slices.Sorted(maps.Keys(n.eps)) {
			if liveEP[LiveEndpoint{n.name, key}] {
				continue
			}
			ep := n.eps[key]
			delete(n.eps, key)
			s.unregister(n, ep)
			out.Endpoints = append(out.Endpoints, LiveEndpoint{n.name, ep.Name})
		}
	}
	s.nets = keep
	return out, nil
}

// Close closes every listener and makes further calls fail with ErrClosed.
// It may be called more than once.
func (s *Server) Close() error {
	if s.usable() != nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	ls := make([]*Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	s.stopSockets()
	return errors.Join(errs...)
}
