package macvlan

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// afterAnchor, when a test sets it, is called by New once the anchor
// exists, to inject a failure half way.
var afterAnchor func() error

// stepHooks holds, by network name, a func(step string) error that a test
// set: New, Attach, Detach and Delete call it at their steps (named), to
// inject a failure, to hold the call there, or to kill the process there.
var stepHooks sync.Map

// step calls the network's step hook, if a test set one.
func step(network, name string) error {
	if f, ok := stepHooks.Load(network); ok {
		return f.(func(string) error)(name)
	}
	return nil
}

// netState is what the Networks of one network in this process share: the
// namespaces of the endpoints attached through them, so that Detach and
// Delete reach the containers' interfaces.
type netState struct {
	mu   sync.Mutex
	eps  map[string]*netns.NS
	busy keylock.Map // endpoints being attached or detached
}

// lock serialises the attaches and detaches of one endpoint (of all
// endpoints, for key ""), so that two calls for one container cannot undo
// each other's work. It returns the unlock.
func (s *netState) lock(key string) func() { return s.busy.Lock(key) }

// lockKey is the key of lock for endpoint id: one for the whole network
// in passthru mode, which has at most one endpoint.
func (n *Network) lockKey(id string) string {
	if n.cfg.Mode == ModePassthru {
		return ""
	}
	return id
}

func (s *netState) ns(id string) *netns.NS {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eps[id]
}

func (s *netState) remember(id string, ns *netns.NS) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns == nil {
		delete(s.eps, id)
	} else {
		s.eps[id] = ns
	}
}

var registry = struct {
	sync.Mutex
	m map[string]*netState
}{m: map[string]*netState{}}

func stateFor(host *netns.NS, name string) *netState {
	key := host.ID().String() + "/" + name
	registry.Lock()
	defer registry.Unlock()
	s, ok := registry.m[key]
	if !ok {
		s = &netState{eps: map[string]*netns.NS{}}
		registry.m[key] = s
	}
	return s
}

func forgetState(host *netns.NS, name string) {
	registry.Lock()
	delete(registry.m, host.ID().String()+"/"+name)
	registry.Unlock()
}

// New creates a macvlan network on cfg.Parent in host, like `docker
// network create -d macvlan -o parent=PARENT`: the network's pool
// "macvlan."+Name in alloc and its anchor, a macvlan interface on the
// parent (down) that carries nsnet's mark. The parent itself is not
// changed.
//
// If the network exists with the same settings, New returns it; with other
// settings, or when the anchor's name is taken by a link that is not the
// network's, it fails with ErrExists. Bad input fails before anything is
// changed: a *netns.ValidationError for a bad Config, a parent that is down
// or is itself a network's anchor, an MTU above the parent's; an error
// matching ErrNotFound for a missing parent; ErrInUse for a parent that a
// passthru macvlan holds, or a passthru network on a parent that other
// macvlans use; ErrOverlap for a subnet overlapping another network's. A
// failure half way removes what was made.
func New(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, cfg Config) (_ *Network, err error) {
	defer func() { err = sentinel(err) }()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if host == nil || alloc == nil {
		return nil, bad("host, alloc", "<nil>", "a host namespace and an allocator are required")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg.Mode = cfg.mode()
	h, err := host.Netlink()
	if err != nil {
		return nil, err
	}
	anchor := AnchorName(cfg.Name)
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "macvlan." + op, NS: host.String(), Name: anchor, Err: err}
	}

	parent, err := h.LinkByName(cfg.Parent)
	if nlerr.NotExist(err) {
		return nil, fmt.Errorf("macvlan: network %q: parent %s in %s: %w", cfg.Name, cfg.Parent, host, ErrNotFound)
	}
	if err != nil {
		return nil, &netns.OpError{Op: "macvlan.parent", NS: host.String(), Name: cfg.Parent, Err: err}
	}
	pa := parent.Attrs()
	if m, ok := decodeNetMark(pa.Alias); ok {
		return nil, bad("Config.Parent", cfg.Parent, fmt.Sprintf("is the anchor of macvlan network %q", m.Name))
	}
	if pa.Flags&net.FlagUp == 0 {
		return nil, bad("Config.Parent", cfg.Parent, "is down")
	}
	if cfg.MTU > pa.MTU {
		return nil, bad("Config.MTU", fmt.Sprint(cfg.MTU), fmt.Sprintf("more than the MTU of parent %s, %d", cfg.Parent, pa.MTU))
	}

	unlock, err := locks.Network(host, cfg.Name, true)
	if err != nil {
		return nil, err
	}
	defer unlock(false)
	others, err := List(ctx, host, alloc)
	if err != nil {
		return nil, err
	}
	var taken []netip.Prefix
	for _, o := range others {
		if o.Name == cfg.Name {
			if !sameSettings(cfg, o.Config, o.poolMissing) {
				return nil, fmt.Errorf("macvlan: network %q (on %s, %s): %w", cfg.Name, o.Parent, o.Mode, ErrExists)
			}
			n := open(host, alloc, o)
			if o.poolMissing {
				// Its pool is gone (a Delete killed half way, or a lost
				// store): the repair makes it again.
				if len(cfg.Subnets) > 0 {
					n.cfg.Subnets = cfg.Subnets
				}
				if err := n.makePool(ctx, others); err != nil {
					return nil, err
				}
			}
			// What the anchor records that live endpoints hold, and the
			// store lost, goes back to them.
			if err := n.rerecordAll(ctx); err != nil {
				return nil, err
			}
			return n, nil
		}
		for _, s := range o.Subnets {
			taken = append(taken, s.Subnet)
		}
	}
	group := ctrlink.Group("macvlan/" + cfg.Name)
	if l, err := h.LinkByName(anchor); err == nil && (l.Type() != "macvlan" || l.Attrs().Group != group) {
		return nil, fmt.Errorf("macvlan: %s is taken by a %s link that is not network %q's: %w", anchor, l.Type(), cfg.Name, ErrExists)
	}
	// The parent: a passthru macvlan takes it alone (the kernel refuses
	// any second macvlan), so a passthru network needs a parent no macvlan
	// uses, and no network can use a parent a passthru macvlan holds.
	links, err := host.Links()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		mv, ok := l.(*netlink.Macvlan)
		if !ok || mv.ParentIndex != pa.Index || mv.Name == anchor {
			continue
		}
		what := "macvlan " + mv.Name
		if m, ok := decodeNetMark(mv.Alias); ok {
			what = fmt.Sprintf("macvlan network %q", m.Name)
		}
		if mv.Mode == netlink.MACVLAN_MODE_PASSTHRU {
			return nil, errs.Wrap(ErrInUse, "macvlan: network %q: parent %s is held by passthru %s", cfg.Name, cfg.Parent, what)
		}
		if cfg.Mode == ModePassthru {
			return nil, errs.Wrap(ErrInUse, "macvlan: passthru network %q: parent %s is used by %s", cfg.Name, cfg.Parent, what)
		}
	}
	if cfg.MTU == 0 {
		cfg.MTU = pa.MTU
	}
	for _, s := range cfg.Subnets {
		for _, t := range taken {
			if s.Subnet.Overlaps(t) {
				return nil, fmt.Errorf("macvlan: network %q: subnet %s overlaps %s: %w", cfg.Name, s.Subnet, t, ErrOverlap)
			}
		}
	}
	// The anchor first (marked from the moment it exists by its group):
	// the pool never exists without the link by which a later process
	// finds the network.
	n := &Network{host: host, alloc: alloc, cfg: cfg, parent: pa.Index, pool: poolName(cfg.Name), anchor: anchor}
	if err := n.makeAnchor(ctx); err != nil {
		return nil, err
	}
	if afterAnchor != nil {
		if err := afterAnchor(); err != nil {
			n.deleteAnchor()
			return nil, opErr("create", err)
		}
	}
	if err := step(cfg.Name, "anchor"); err != nil {
		n.deleteAnchor()
		return nil, err
	}
	if err := n.makePool(ctx, others); err != nil {
		n.deleteAnchor()
		return nil, err
	}
	n.state = stateFor(host, cfg.Name)
	return n, nil
}

// makePool creates the network's pool with the subnets of n.cfg (or the
// next free), avoiding the other networks' subnets and the host's routes.
func (n *Network) makePool(ctx context.Context, others []Info) error {
	var taken []netip.Prefix
	for _, o := range others {
		if o.Name == n.cfg.Name {
			continue
		}
		for _, s := range o.Subnets {
			taken = append(taken, s.Subnet)
		}
	}
	created, err := n.alloc.CreatePool(ctx, ipam.PoolConfig{Name: n.pool, Subnets: n.cfg.Subnets, Avoid: n.host, AvoidPrefixes: taken})
	if err != nil {
		return fmt.Errorf("macvlan: network %q: %w", n.cfg.Name, err)
	}
	n.cfg.Subnets = created.Subnets
	return nil
}

// makeAnchor creates the network's anchor on the parent, marked, down: a
// bridge-mode macvlan (the shim, once set up), or for a passthru network a
// passthru macvlan that holds the parent. A failure half way removes it.
func (n *Network) makeAnchor(ctx context.Context) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "macvlan." + op, NS: n.host.String(), Name: n.anchor, Err: err}
	}
	mark, err := encodeMark(n.cfg.mark())
	if err != nil {
		return bad("Config.Labels", fmt.Sprint(n.cfg.Labels), err.Error())
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = n.anchor
	attrs.ParentIndex = n.parent
	attrs.MTU = n.cfg.MTU
	mode := netlink.MACVLAN_MODE_BRIDGE
	if n.cfg.Mode == ModePassthru {
		mode = netlink.MACVLAN_MODE_PASSTHRU
	} else {
		attrs.HardwareAddr = veth.RandomMAC()
	}
	attrs.Group = ctrlink.Group("macvlan/" + n.cfg.Name)
	var mv netlink.Link = &netlink.Macvlan{LinkAttrs: attrs, Mode: mode}
	if l, err := h.LinkByName(n.anchor); err == nil && l.Type() == "macvlan" && l.Attrs().Group == attrs.Group {
		// Half made by a call killed before it marked it: completed here.
		mv = l
	} else if err := h.LinkAdd(mv); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// The kernel's answer when the parent is held by a passthru
			// macvlan, or a passthru one is asked for on a used parent.
			err = fmt.Errorf("%w (the parent is held by another macvlan): %w", err, ErrInUse)
		}
		return opErr("create", err)
	}
	fail := func(err error) error {
		h.LinkDel(mv)
		return err
	}
	// The mark goes on by a request of its own: the kernel ignores
	// IFLA_IFALIAS when it creates a link.
	if err := step(n.cfg.Name, "anchor-created"); err != nil {
		return fail(err)
	}
	if err := h.LinkSetAlias(mv, mark); err != nil {
		return fail(opErr("mark", err))
	}
	// No IPv6 and no router advertisements until the shim asks for them.
	if err := n.host.SetSysctl("net/ipv6/conf/"+n.anchor+"/accept_ra", "0"); err != nil {
		return fail(err)
	}
	if err := n.host.SetSysctl("net/ipv6/conf/"+n.anchor+"/disable_ipv6", "1"); err != nil {
		return fail(err)
	}
	return nil
}

// deleteAnchor removes the anchor if it is the network's.
func (n *Network) deleteAnchor() error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	l, err := h.LinkByName(n.anchor)
	if err != nil {
		return nil
	}
	m, marked := decodeNetMark(l.Attrs().Alias)
	if l.Type() != "macvlan" || marked && m.Name != n.cfg.Name || !marked && l.Attrs().Group != ctrlink.Group("macvlan/"+n.cfg.Name) {
		return nil
	}
	if err := h.LinkDel(l); err != nil && !nlerr.NotExist(err) {
		return &netns.OpError{Op: "macvlan.delete", NS: n.host.String(), Name: n.anchor, Err: err}
	}
	return nil
}

// sameSettings compares what the caller asked for with what exists; fields
// the caller left to be chosen are not compared.
func sameSettings(want, have Config, poolMissing bool) bool {
	if want.Parent != have.Parent || want.mode() != have.mode() {
		return false
	}
	if want.MTU != 0 && want.MTU != have.MTU {
		return false
	}
	if !maps.Equal(want.Labels, have.Labels) {
		return false
	}
	if len(want.Subnets) == 0 || poolMissing {
		return true
	}
	if len(want.Subnets) != len(have.Subnets) {
		return false
	}
	for i, s := range want.Subnets {
		h := have.Subnets[i]
		if s.Subnet != h.Subnet || (s.Gateway.IsValid() && s.Gateway != h.Gateway) || s.IPRange != h.IPRange {
			return false
		}
	}
	return true
}

// Open returns the network called name in host, as an earlier process (or
// this one) created it. It fails with ErrNotFound if there is none (a
// passthru network whose container holds the parent has no anchor and
// cannot be opened until the container is detached).
func Open(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, name string) (*Network, error) {
	infos, err := List(ctx, host, alloc)
	if err != nil {
		return nil, err
	}
	for _, i := range infos {
		if i.Name == name {
			return open(host, alloc, i), nil
		}
	}
	return nil, fmt.Errorf("macvlan: network %q: %w", name, ErrNotFound)
}

func open(host *netns.NS, alloc *ipam.Allocator, i Info) *Network {
	return &Network{host: host, alloc: alloc, cfg: i.Config, parent: i.parent, pool: poolName(i.Name), anchor: AnchorName(i.Name), state: stateFor(host, i.Name)}
}

// List returns the macvlan networks of host, read from the kernel (the
// anchors carrying nsnet's marks, with their parents and the shim) and
// from alloc (subnets, and the endpoints as the owners of addresses), like
// `docker network ls` and `docker network inspect`.
func List(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) ([]Info, error) {
	if host == nil || alloc == nil {
		return nil, &netns.ValidationError{Pkg: "macvlan", Field: "host, alloc", Value: "<nil>", Reason: "a host namespace and an allocator are required"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	links, err := host.Links()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []Info
	for _, l := range links {
		a := l.Attrs()
		m, ok := decodeNetMark(a.Alias)
		if !ok || l.Type() != "macvlan" || a.Name != AnchorName(m.Name) {
			continue
		}
		info := Info{Index: a.Index, parent: a.ParentIndex, Config: Config{
			Name: m.Name, Parent: names[a.ParentIndex], Mode: m.Mode, MTU: a.MTU, Labels: m.Labels,
		}}
		pool, allocs, err := alloc.Inspect(ctx, poolName(m.Name))
		switch {
		case err == nil:
			info.Subnets = pool.Subnets
			info.Endpoints = endpoints(m.Name, allocs)
		case errors.Is(err, ipam.ErrNotFound):
			info.poolMissing = true
		default:
			return nil, err
		}
		if a.Flags&net.FlagUp != 0 {
			shim, err := readShim(host, a)
			if err != nil {
				return nil, err
			}
			info.Shim = &shim
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(x, y Info) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// endpoints returns the endpoints of network name that hold addresses in
// allocs.
func endpoints(name string, allocs []ipam.Allocation) []Endpoint {
	var eps []Endpoint
	for _, al := range allocs {
		id, ok := strings.CutPrefix(al.Owner, name+"/")
		if !ok || id == shimSuffix {
			continue
		}
		addrs, since := leases(al)
		eps = append(eps, Endpoint{ID: id, Network: name, Addrs: addrs, Since: since})
	}
	return eps
}

// leases returns an allocation's addresses and when it was made.
func leases(al ipam.Allocation) ([]netip.Prefix, time.Time) {
	var addrs []netip.Prefix
	var since time.Time
	for _, l := range al.Leases() {
		addrs = append(addrs, l.Addr)
		since = l.Time
	}
	return addrs, since
}

// Inspect reads the network back from the kernel and the allocator, with
// its endpoints and shim, like `docker network inspect`. Endpoints attached
// in this process come with their namespace and interface.
func (n *Network) Inspect(ctx context.Context) (Info, error) {
	if err := n.usable(); err != nil {
		return Info{}, err
	}
	infos, err := List(ctx, n.host, n.alloc)
	if err != nil {
		return Info{}, err
	}
	var info Info
	found := false
	for _, i := range infos {
		if i.Name == n.cfg.Name {
			info, found = i, true
		}
	}
	if !found {
		// A passthru network whose container holds the parent has no
		// anchor: its pool still tells.
		pool, allocs, err := n.alloc.Inspect(ctx, n.pool)
		if err != nil || n.cfg.Mode != ModePassthru || len(endpoints(n.cfg.Name, allocs)) == 0 {
			return Info{}, fmt.Errorf("macvlan: network %q: %w", n.cfg.Name, ErrNotFound)
		}
		info = Info{Config: n.cfg, parent: n.parent, Endpoints: endpoints(n.cfg.Name, allocs)}
		info.Subnets = pool.Subnets
	}
	for i, ep := range info.Endpoints {
		ns := n.state.ns(ep.ID)
		if ns == nil {
			continue
		}
		if l, m, err := n.findEndpoint(ns, ep.ID); err == nil && l != nil {
			info.Endpoints[i].NS = ns
			info.Endpoints[i].IfName = l.Attrs().Name
			info.Endpoints[i].MAC = l.Attrs().HardwareAddr
			info.Endpoints[i].DefaultRoute = m.Gateway
		}
	}
	return info, nil
}

// Delete removes the network: its anchor (and with it the shim), then its
// pool. A network with endpoints fails with ErrInUse unless force is true,
// in which case its endpoints are detached first (the interfaces of those
// whose namespaces this process does not know stay until their containers
// go, and their addresses are released). Deleting a network that is gone
// succeeds.
func (n *Network) Delete(ctx context.Context, force bool) (err error) {
	defer func() { err = sentinel(err) }()
	if err := n.usable(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := locks.Network(n.host, n.cfg.Name, true)
	if err != nil {
		return err
	}
	err = n.delete(ctx, force)
	unlock(err == nil)
	return err
}

// delete is Delete with the network's lock (or the host's) held.
func (n *Network) delete(ctx context.Context, force bool) error {
	info, err := n.Inspect(ctx)
	if errors.Is(err, ErrNotFound) {
		info = Info{Config: n.cfg}
	} else if err != nil {
		return err
	}
	if len(info.Endpoints) > 0 && !force {
		ids := make([]string, len(info.Endpoints))
		for i, e := range info.Endpoints {
			ids[i] = e.ID
		}
		return errs.Wrap(ErrInUse, "macvlan: network %q has endpoints %v", n.cfg.Name, ids)
	}
	if err := step(n.cfg.Name, "checked"); err != nil {
		return err
	}
	for _, e := range info.Endpoints {
		if err := n.detach(ctx, e.ID, nil, false); err != nil {
			return err
		}
	}
	// The pool before the anchor: a pool never outlives the link by
	// which a later process finds the network.
	if _, err := n.alloc.GC(ctx, n.pool, func(string) bool { return false }); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	if err := n.alloc.DeletePool(ctx, n.pool); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	if err := step(n.cfg.Name, "delete-pool"); err != nil {
		return err
	}
	if err := n.deleteAnchor(); err != nil {
		return err
	}
	forgetState(n.host, n.cfg.Name)
	return nil
}
