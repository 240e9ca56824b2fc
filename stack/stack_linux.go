package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
)

// Stack is one host's networks and containers.
type Stack struct {
	mu     sync.Mutex
	host   *netns.NS
	dir    string
	store  *ipam.FileStore
	alloc  *ipam.Allocator
	ports  *portmap.Mapper
	dns    *dnsd.Server
	nets   map[string]*bridge.Network
	dnsLns map[string][]*dnsd.Listener // by network: one per gateway
	st     state
	closed bool
}

// Open opens the stack of host kept in cfg.StateDir, and brings back what
// the state holds (see the package doc). The caller keeps host, which
// must outlive the Stack.
func Open(ctx context.Context, host *netns.NS, cfg Config) (_ *Stack, err error) {
	if host == nil {
		return nil, invalid("host", "<nil>", "no namespace")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	s := &Stack{host: host, dir: cfg.StateDir, st: st, nets: map[string]*bridge.Network{}, dnsLns: map[string][]*dnsd.Listener{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.store, err = ipam.OpenFileStore(filepath.Join(cfg.StateDir, "ipam")); err != nil {
		return nil, err
	}
	if s.alloc, err = ipam.New(s.store, ipam.Config{}); err != nil {
		return nil, err
	}
	if s.ports, err = portmap.New(host, portmap.Config{}); err != nil {
		return nil, err
	}
	ups := cfg.Upstreams
	if ups == nil {
		if ups, err = dnsd.DefaultUpstreams(""); err != nil {
			ups = []netip.AddrPort{} // no resolv.conf: names only
		}
	}
	if s.dns, err = dnsd.New(dnsd.Config{NS: host, Upstreams: ups, Domain: cfg.Domain, Logger: cfg.Logger}); err != nil {
		return nil, err
	}

	if err := s.recover(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func dnsEndpoint(name string, ep Endpoint) dnsd.Endpoint {
	e := dnsd.Endpoint{Name: name, Aliases: ep.Aliases}
	for _, p := range ep.Addrs {
		e.Addrs = append(e.Addrs, p.Addr())
	}
	return e
}

// serveDNS adds nw to the DNS server and listens on its gateways, as
// aardvark-dns does, and remembers nw.
func (s *Stack) serveDNS(ctx context.Context, nw *bridge.Network, internal bool) error {
	cfg := nw.Config()
	var subnets []netip.Prefix
	for _, sc := range cfg.Subnets {
		subnets = append(subnets, sc.Subnet)
	}
	if err := s.dns.AddNetwork(cfg.Name, subnets, internal, cfg.Bridge); err != nil {
		return err
	}
	for _, sc := range cfg.Subnets {
		ln, err := s.dns.ListenHost(ctx, s.host, netip.AddrPortFrom(sc.Gateway, 53))
		if err != nil {
			s.stopDNS(cfg.Name)
			return fmt.Errorf("stack: DNS on %s: %w", sc.Gateway, err)
		}
		s.dnsLns[cfg.Name] = append(s.dnsLns[cfg.Name], ln)
	}
	s.nets[cfg.Name] = nw
	return nil
}

func (s *Stack) stopDNS(name string) {
	for _, ln := range s.dnsLns[name] {
		ln.Close()
	}
	delete(s.dnsLns, name)
	s.dns.RemoveNetwork(name)
	delete(s.nets, name)
}

func (s *Stack) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func networkInfo(nw *bridge.Network) Network {
	cfg := nw.Config()
	return Network{Name: cfg.Name, Bridge: cfg.Bridge, Subnets: cfg.Subnets, Internal: cfg.Internal}
}

// CreateNetwork makes a bridge network with outbound NAT (none if
// internal) and a DNS server on its gateways, like `docker network create`.
// A network of that name with the same settings is returned as it is;
// with other settings it fails with ErrExists.
func (s *Stack) CreateNetwork(ctx context.Context, cfg NetworkConfig) (_ Network, err error) {
	if s == nil {
		return Network{}, ErrClosed
	}
	if err := cfg.Validate(); err != nil {
		return Network{}, err
	}
	if err := s.lock(); err != nil {
		return Network{}, err
	}
	defer s.mu.Unlock()
	if nw, ok := s.nets[cfg.Name]; ok {
		have := nw.Config()
		if have.Internal != cfg.Internal || have.DisableICC != cfg.DisableICC || cfg.MTU != 0 && cfg.MTU != have.MTU ||
			cfg.Subnets != nil && !sameSubnets(cfg.Subnets, have.Subnets) {
			return Network{}, fmt.Errorf("stack: network %s: %w with other settings", cfg.Name, ErrExists)
		}
		return networkInfo(nw), nil
	}
	nw, err := bridge.New(ctx, s.host, s.alloc, bridge.Config{Name: cfg.Name, Subnets: cfg.Subnets, Internal: cfg.Internal, DisableICC: cfg.DisableICC, MTU: cfg.MTU})
	if err != nil {
		return Network{}, err
	}
	defer func() {
		if err != nil {
			nw.Delete(context.WithoutCancel(ctx), true)
		}
	}()
	bc := nw.Config()
	if !cfg.Internal {
		if err := nat.Masquerade(ctx, s.host, nat.Network{Bridge: bc.Bridge, Subnets: subnetsOf(bc.Subnets)}); err != nil {
			return Network{}, err
		}
		defer func() {
			if err != nil {
				nat.Remove(context.WithoutCancel(ctx), s.host, bc.Bridge)
			}
		}()
	}
	if err := s.serveDNS(ctx, nw, cfg.Internal); err != nil {
		return Network{}, err
	}
	s.st.Networks[cfg.Name] = savedNetwork{Internal: cfg.Internal, Bridge: &bc}
	if err := s.st.save(s.dir); err != nil {
		delete(s.st.Networks, cfg.Name)
		s.stopDNS(cfg.Name)
		return Network{}, err
	}
	return networkInfo(nw), nil
}

func subnetsOf(scs []ipam.SubnetConfig) []netip.Prefix {
	var ps []netip.Prefix
	for _, sc := range scs {
		ps = append(ps, sc.Subnet)
	}
	return ps
}

func sameSubnets(want, have []ipam.SubnetConfig) bool {
	return slices.Equal(subnetsOf(want), subnetsOf(have))
}

// Networks returns the stack's networks, by name.
func (s *Stack) Networks() ([]Network, error) {
	if s == nil {
		return nil, ErrClosed
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []Network
	for _, nw := range s.nets {
		out = append(out, networkInfo(nw))
	}
	slices.SortFunc(out, func(a, b Network) int { return cmpString(a.Name, b.Name) })
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DeleteNetwork removes a network, like `docker network rm`: its DNS
// server and rules first, then its bridge. A network with containers
// fails with ErrInUse; a network that does not exist is no error.
func (s *Stack) DeleteNetwork(ctx context.Context, name string) error {
	if s == nil {
		return ErrClosed
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	nw, ok := s.nets[name]
	if !ok {
		return nil
	}
	for id, c := range s.st.Containers {
		for _, ep := range c.Endpoints {
			if ep.Network == name {
				return fmt.Errorf("stack: network %s: %w (container %s)", name, ErrInUse, id)
			}
		}
	}
	bc := nw.Config()
	s.stopDNS(name)
	if err := nat.Remove(ctx, s.host, bc.Bridge); err != nil {
		return err
	}
	if err := nw.Delete(ctx, false); err != nil {
		return err
	}
	delete(s.st.Networks, name)
	return s.st.save(s.dir)
}

// Run connects a container, like the network part of `docker run`: an
// interface on each network (the first with the default route), its name
// and aliases in each network's DNS, and its published ports, in that
// order. A container that runs with the same ID is returned as it is. A
// failure half way undoes what was done.
func (s *Stack) Run(ctx context.Context, cfg ContainerConfig) (_ Container, err error) {
	if s == nil {
		return Container{}, ErrClosed
	}
	if err := cfg.Validate(); err != nil {
		return Container{}, err
	}
	if err := s.lock(); err != nil {
		return Container{}, err
	}
	defer s.mu.Unlock()
	if cfg.Name == "" {
		cfg.Name = cfg.ID
	}
	if c, ok := s.st.Containers[cfg.ID]; ok {
		if err := s.repair(ctx, cfg, c); err != nil {
			return Container{}, err
		}
		return s.container(cfg.ID, c), nil
	}
	var nws []*bridge.Network
	for _, a := range cfg.Networks {
		nw, ok := s.nets[a.Network]
		if !ok {
			return Container{}, fmt.Errorf("stack: network %s: %w", a.Network, ErrNotFound)
		}
		nws = append(nws, nw)
	}
	undo := context.WithoutCancel(ctx)
	saved := savedContainer{Name: cfg.Name}
	defer func() {
		if err != nil {
			s.teardown(undo, cfg.ID, saved)
		}
	}()
	for i, a := range cfg.Networks {
		ep, err := nws[i].Attach(ctx, bridge.EndpointConfig{ID: cfg.ID, NS: cfg.NS, Addrs: a.Addrs, MAC: a.MAC, DefaultRoute: i == 0})
		if err != nil {
			return Container{}, err
		}
		e := Endpoint{Network: a.Network, IfName: ep.IfName, MAC: ep.MAC, Addrs: ep.Addrs, Aliases: a.Aliases}
		saved.Endpoints = append(saved.Endpoints, e)
		if err := s.dns.Register(a.Network, dnsEndpoint(cfg.Name, e)); err != nil {
			return Container{}, err
		}
	}
	var ports []portmap.Mapping
	for _, m := range cfg.Ports {
		m.CtrAddr = addrOfFamily(saved.Endpoints[0].Addrs, !m.HostAddr.Is6())
		if !m.CtrAddr.IsValid() {
			return Container{}, invalid("ContainerConfig.Ports", m.String(), "the container has no address of that family on "+cfg.Networks[0].Network)
		}
		if m.ID == "" {
			m.ID = cfg.ID
		}
		ports = append(ports, m)
	}
	if len(ports) > 0 {
		// All or none, in one transaction.
		if saved.Ports, err = s.ports.AddAll(ctx, ports); err != nil {
			return Container{}, err
		}
	}
	s.st.Containers[cfg.ID] = saved
	if err := s.st.save(s.dir); err != nil {
		delete(s.st.Containers, cfg.ID)
		return Container{}, err
	}
	return s.container(cfg.ID, saved), nil
}

// repair checks the interfaces of container c, which runs, against the
// kernel and makes again what drifted (an address, a route, the
// interface itself), with the addresses and MAC it has: Run of a running
// container never returns success for an interface that does not work.
func (s *Stack) repair(ctx context.Context, cfg ContainerConfig, c savedContainer) error {
	for i, ep := range c.Endpoints {
		nw, ok := s.nets[ep.Network]
		if !ok {
			return fmt.Errorf("stack: network %s: %w", ep.Network, ErrNotFound)
		}
		err := nw.CheckEndpoint(ctx, cfg.ID, cfg.NS)
		if err == nil {
			continue
		}
		if !errors.Is(err, bridge.ErrDrift) && !errors.Is(err, bridge.ErrNotFound) {
			return err
		}
		var addrs []netip.Addr
		for _, p := range ep.Addrs {
			addrs = append(addrs, p.Addr())
		}
		if _, err := nw.Attach(ctx, bridge.EndpointConfig{ID: cfg.ID, NS: cfg.NS, IfName: ep.IfName, Addrs: addrs, MAC: ep.MAC, DefaultRoute: i == 0}); err != nil {
			return err
		}
	}
	return nil
}

func addrOfFamily(addrs []netip.Prefix, v4 bool) netip.Addr {
	for _, p := range addrs {
		if p.Addr().Is4() == v4 {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

func (s *Stack) container(id string, c savedContainer) Container {
	out := Container{ID: id, Name: c.Name, Endpoints: slices.Clone(c.Endpoints), Ports: slices.Clone(c.Ports)}
	for _, ep := range c.Endpoints {
		if nw, ok := s.nets[ep.Network]; ok {
			for _, sc := range nw.Config().Subnets {
				out.Nameservers = append(out.Nameservers, sc.Gateway)
			}
		}
	}
	return out
}

// teardown takes container id down, rules and names before links, and returns the
// first error; it goes on past errors so that one gone piece does not keep
// the others.
func (s *Stack) teardown(ctx context.Context, id string, c savedContainer) error {
	var errs []error
	if len(c.Ports) > 0 {
		errs = append(errs, s.ports.RemoveAll(ctx, c.Ports))
	}
	for _, ep := range c.Endpoints {
		if err := s.dns.Unregister(ep.Network, c.Name); err != nil && !errors.Is(err, dnsd.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	for _, ep := range c.Endpoints {
		if nw, ok := s.nets[ep.Network]; ok {
			errs = append(errs, nw.Detach(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// Stop disconnects a container, like the network part of `docker stop`:
// its ports and names first, then its interfaces. A container the stack
// does not run is no error, and whatever a Run of it cut short by a crash
// left (ports, interfaces) is removed.
func (s *Stack) Stop(ctx context.Context, id string) error {
	if s == nil {
		return ErrClosed
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	c, ok := s.st.Containers[id]
	if !ok {
		// Not in the state: a Run cut short (the process killed between
		// its first step and the save) may still have left its ports and
		// interfaces, all under id: they go too.
		return s.sweep(ctx, id)
	}
	if err := s.teardown(ctx, id, c); err != nil {
		return err
	}
	delete(s.st.Containers, id)
	return s.st.save(s.dir)
}

// sweep removes what a Run of id that never reached the state may have
// left: its published ports (their owner is id) and its interfaces on the
// stack's networks. Removing what is not there is no error.
func (s *Stack) sweep(ctx context.Context, id string) error {
	errs := []error{s.ports.RemoveOwner(ctx, id)}
	for _, nw := range s.nets {
		errs = append(errs, nw.Detach(ctx, id))
	}
	return errors.Join(errs...)
}

// Containers returns the containers the stack runs.
func (s *Stack) Containers() ([]Container, error) {
	if s == nil {
		return nil, ErrClosed
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []Container
	for id, c := range s.st.Containers {
		out = append(out, s.container(id, c))
	}
	slices.SortFunc(out, func(a, b Container) int { return cmpString(a.ID, b.ID) })
	return out, nil
}

// Reconcile puts nsnet's nftables table of the host back as the stack's
// state says (isolation, masquerade, published ports), in one
// transaction: call it after a firewall reload.
func (s *Stack) Reconcile(ctx context.Context) error {
	if s == nil {
		return ErrClosed
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.reconcile(ctx)
}

func (s *Stack) reconcile(ctx context.Context) error {
	var st portmap.State
	for name, nw := range s.nets {
		bc := nw.Config()
		st.Networks = append(st.Networks, portmap.Network{Bridge: bc.Bridge, Subnets: subnetsOf(bc.Subnets), Internal: bc.Internal, DisableICC: bc.DisableICC})
		if !s.st.Networks[name].Internal {
			st.Masquerade = append(st.Masquerade, portmap.Masquerade{Bridge: bc.Bridge, Subnets: subnetsOf(bc.Subnets)})
		}
	}
	for _, c := range s.st.Containers {
		st.Mappings = append(st.Mappings, c.Ports...)
	}
	return portmap.Reconcile(ctx, s.host, st)
}

// Close stops the DNS server and lets go of the port reservations and the
// state directory. Networks and containers stay, with their rules: Open
// brings the stack back.
func (s *Stack) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for name := range s.dnsLns {
		for _, ln := range s.dnsLns[name] {
			errs = append(errs, ln.Close())
		}
	}
	if s.dns != nil {
		errs = append(errs, s.dns.Close())
	}
	if s.ports != nil {
		errs = append(errs, s.ports.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	return errors.Join(errs...)
}
