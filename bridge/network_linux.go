package bridge

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// New creates a bridge network in host, like `docker network create`: a
// bridge (STP off, no forward delay) with the gateway addresses of its
// subnets, its MAC pinned, up, with the isolation rules that keep other
// networks' containers away, and its addresses in the pool "bridge."+Name
// of alloc.
//
// If the network exists with the same settings, New checks it and repairs
// what drifted (its pool, addresses, MTU, STP, sysctls, isolation rules,
// up) and returns it; with other settings, or when the bridge name is taken
// by a link that is not the network's, it fails with ErrExists. A bridge
// that an earlier New left half made (killed before it was marked) is
// nsnet's by its device group, and New completes it. A subnet overlapping
// another network of the host fails with ErrOverlap. Bad input is a
// *netns.ValidationError. A failure half way removes what was made.
//
// New, Delete, Attach and Detach of one network are serialised across
// goroutines and processes by lock files (see the package doc), so two
// processes creating one network at once both get it.
func New(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, cfg Config) (_ *Network, err error) {
	defer func() { err = sentinel(err) }()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if host == nil || alloc == nil {
		return nil, &netns.ValidationError{Pkg: "bridge", Field: "host, alloc", Value: "<nil>", Reason: "a host namespace and an allocator are required"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.Bridge == "" {
		cfg.Bridge = BridgeName(cfg.Name)
	}
	unlock, err := locks.Network(host, cfg.Name, true)
	if err != nil {
		return nil, err
	}
	defer unlock(false)
	h, err := host.Netlink()
	if err != nil {
		return nil, err
	}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "bridge." + op, NS: host.String(), Name: cfg.Bridge, Err: err}
	}

	others, err := list(ctx, host, alloc)
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.Name == cfg.Name || o.Bridge == cfg.Bridge {
			if o.Name != cfg.Name || !sameSettings(cfg, o.Config, o.poolMissing) {
				return nil, fmt.Errorf("bridge: network %q (%s): %w", cfg.Name, o.Bridge, ErrExists)
			}
			n := open(host, alloc, o.Info)
			if o.poolMissing && len(cfg.Subnets) > 0 {
				n.cfg.Subnets = cfg.Subnets
			}
			if err := n.setup(ctx, others); err != nil {
				return nil, err
			}
			return n, nil
		}
	}
	group := ctrlink.Group("bridge/" + cfg.Name)
	var br netlink.Link
	if l, err := h.LinkByName(cfg.Bridge); err == nil {
		if l.Type() != "bridge" || l.Attrs().Group != group {
			return nil, fmt.Errorf("bridge: %s is taken by a %s link that is not an nsnet network: %w", cfg.Bridge, l.Type(), ErrExists)
		}
		// Half made by an earlier New of this network that was killed
		// before it marked the bridge: completed below.
		br = l
		cfg.MAC = l.Attrs().HardwareAddr
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU(host)
	}
	if cfg.MAC == nil {
		cfg.MAC = veth.RandomMAC()
	}
	for _, s := range cfg.Subnets {
		for _, o := range others {
			for _, t := range o.Subnets {
				if s.Subnet.Overlaps(t.Subnet) {
					return nil, fmt.Errorf("bridge: network %q: subnet %s overlaps %s: %w", cfg.Name, s.Subnet, t.Subnet, ErrOverlap)
				}
			}
		}
	}
	if br == nil && !cfg.AllowRouteOverlap && len(cfg.Subnets) > 0 {
		// A half-made bridge of this network (br != nil) has its own
		// routes; a new one must not take a range the host routes
		// elsewhere.
		routes, err := host.RoutePrefixes(ctx)
		if err != nil {
			return nil, err
		}
		for i, s := range cfg.Subnets {
			for _, r := range routes {
				if s.Subnet.Overlaps(r) {
					return nil, &netns.ValidationError{Pkg: "bridge", Field: fmt.Sprintf("Config.Subnets[%d].Subnet", i), Value: s.Subnet.String(),
						Reason: fmt.Sprintf("overlaps the host's route to %s (Config.AllowRouteOverlap takes it anyway)", r), Err: ErrOverlap}
				}
			}
		}
	}
	mark, err := encodeMark(cfg.mark())
	if err != nil {
		return nil, err
	}
	if br == nil {
		// The group marks the bridge as this network's from the moment it
		// exists; the alias, which the kernel ignores when it creates a
		// link, follows.
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Bridge
		attrs.HardwareAddr = cfg.MAC
		attrs.Group = group
		b := &netlink.Bridge{LinkAttrs: attrs}
		if err := h.LinkAdd(b); err != nil {
			if errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("bridge: %s is taken by a link that is not an nsnet network: %w", cfg.Bridge, ErrExists)
			}
			return nil, opErr("create", err)
		}
		br = b
	}
	n := &Network{host: host, alloc: alloc, cfg: cfg, index: br.Attrs().Index, pool: poolName(cfg.Name)}
	fail := func(err error) (*Network, error) {
		// What this call made goes: the pool (if it made it) first, so
		// that no pool outlives its bridge, then the bridge.
		if n.madePool {
			alloc.DeletePool(context.WithoutCancel(ctx), n.pool)
		}
		h.LinkDel(br)
		return nil, err
	}
	if err := step(cfg.Name, "bridge"); err != nil {
		return fail(err)
	}
	if err := h.LinkSetAlias(br, mark); err != nil {
		return fail(opErr("mark", err))
	}
	if err := n.setup(ctx, others); err != nil {
		return fail(err)
	}
	return n, nil
}

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

// setup makes the network's kernel objects what its settings say, doing
// only what is missing: its pool (made with the subnets of n.cfg, or the
// next free), the bridge's MTU, STP, sysctls, gateway addresses, up, and
// the isolation rules. New runs it on a new bridge and, as the repair, on
// one that exists.
func (n *Network) setup(ctx context.Context, others []listed) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "bridge." + op, NS: n.host.String(), Name: n.cfg.Bridge, Err: err}
	}
	br, err := h.LinkByIndex(n.index)
	if err != nil {
		return opErr("lookup", err)
	}
	pool, _, err := n.alloc.Inspect(ctx, n.pool)
	if err == nil {
		// The pool outlived its bridge (someone deleted the bridge): it
		// has the subnets and the endpoints' addresses.
		if len(n.cfg.Subnets) > 0 && !sameSettings(Config{Subnets: n.cfg.Subnets}, Config{Subnets: pool.Subnets}, false) {
			return fmt.Errorf("bridge: network %q: its pool %s has subnets %v: %w", n.cfg.Name, n.pool, pool.Subnets, ErrExists)
		}
		n.cfg.Subnets = pool.Subnets
	} else if errors.Is(err, ipam.ErrNotFound) {
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
			return fmt.Errorf("bridge: network %q: %w", n.cfg.Name, err)
		}
		n.cfg.Subnets = created.Subnets
		n.madePool = true
	} else if err != nil {
		return err
	}
	if err := step(n.cfg.Name, "pool"); err != nil {
		return err
	}
	// An MTU given at creation is not "set by the user" to the bridge
	// driver, which then follows its ports' MTUs (and falls back to 1500
	// when it has none); a change of MTU after creation pins it.
	if br.Attrs().MTU != n.cfg.MTU {
		if err := h.LinkSetMTU(br, n.cfg.MTU); err != nil {
			return opErr("mtu", err)
		}
	}
	if err := setNoSTP(n.host, n.index); err != nil {
		return opErr("stp", err)
	}
	// The bridge takes no router advertisements: a container must not be
	// able to configure the host (CVE-2020-13401).
	if err := n.host.SetSysctl("net/ipv6/conf/"+n.cfg.Bridge+"/accept_ra", "0"); err != nil {
		return err
	}
	// Strict reverse-path filtering: a packet that comes in on the bridge
	// with a source address the host would not route back out of it (a
	// container forging another network's or the world's address) is
	// dropped.
	if err := n.host.SetSysctl("net/ipv4/conf/"+n.cfg.Bridge+"/rp_filter", "1"); err != nil {
		return err
	}
	var added []netip.Prefix
	for _, s := range n.cfg.Subnets {
		p := netip.PrefixFrom(s.Gateway, s.Subnet.Bits())
		a := &netlink.Addr{IPNet: ipnet.From(p)}
		if s.Gateway.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(br, a); err == nil {
			added = append(added, p)
		} else if !errors.Is(err, os.ErrExist) {
			return opErr("address", err)
		}
	}
	if err := step(n.cfg.Name, "address"); err != nil {
		return err
	}
	if err := h.LinkSetUp(br); err != nil {
		return opErr("up", err)
	}
	if err := nft.AddNetwork(ctx, n.host, nftNetwork(n.cfg)); err != nil {
		return err
	}
	// A gateway address given back to a bridge with ports (a repair):
	// containers that gave up on it hear of it at once.
	if len(added) > 0 && br.Attrs().MasterIndex == 0 && hasPorts(n.host, n.index) {
		return ctrlink.Announce(n.host, n.index, br.Attrs().HardwareAddr, added, nil)
	}
	return nil
}

// hasPorts reports whether the bridge with index has ports.
func hasPorts(host *netns.NS, index int) bool {
	links, err := host.Links()
	if err != nil {
		return false
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == index {
			return true
		}
	}
	return false
}

func nftNetwork(cfg Config) nft.Network {
	n := nft.Network{Bridge: cfg.Bridge, Internal: cfg.Internal, ICC: !cfg.DisableICC}
	for _, s := range cfg.Subnets {
		n.Subnets = append(n.Subnets, s.Subnet)
	}
	return n
}

// sameSettings compares what the caller asked for with what exists; fields
// the caller left to be chosen are not compared, nor are the subnets of a
// network whose pool is gone (its bridge may have lost its addresses too:
// the repair gives it those asked for).
func sameSettings(want, have Config, poolMissing bool) bool {
	if want.Bridge != "" && want.Bridge != have.Bridge {
		return false
	}
	if want.MTU != 0 && want.MTU != have.MTU {
		return false
	}
	if want.MAC != nil && want.MAC.String() != have.MAC.String() {
		return false
	}
	if want.Internal != have.Internal || want.DisableICC != have.DisableICC || !maps.Equal(want.Labels, have.Labels) {
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

// defaultMTU is the MTU of the link of host's default route (IPv4, else
// IPv6), or 1500.
func defaultMTU(host *netns.NS) int {
	h, err := host.Netlink()
	if err != nil {
		return 1500
	}
	routes, err := host.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return 1500
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().MTU > 0 {
				return l.Attrs().MTU
			}
		}
	}
	return 1500
}

// Open returns the network called name in host, as an earlier process
// (or this one) created it. It fails with ErrNotFound if there is none.
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
	return nil, fmt.Errorf("bridge: network %q: %w", name, ErrNotFound)
}

func open(host *netns.NS, alloc *ipam.Allocator, i Info) *Network {
	return &Network{host: host, alloc: alloc, cfg: i.Config, index: i.Index, pool: poolName(i.Name)}
}

// List returns the networks of host with their endpoints, read from the
// kernel (bridges and ports carrying nsnet's marks) and from alloc
// (subnets as created, the endpoints' addresses), like `docker network ls`
// and `docker network inspect`, or `brctl show`.
func List(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) ([]Info, error) {
	ls, err := list(ctx, host, alloc)
	if err != nil {
		return nil, err
	}
	res := make([]Info, len(ls))
	for i, l := range ls {
		res[i] = l.Info
	}
	return res, nil
}

// listed is a network as list found it.
type listed struct {
	Info
	allocs      map[string]ipam.Allocation
	poolMissing bool // its pool is gone: Subnets are the bridge's addresses
}

func list(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) ([]listed, error) {
	if host == nil || alloc == nil {
		return nil, &netns.ValidationError{Pkg: "bridge", Field: "host, alloc", Value: "<nil>", Reason: "a host namespace and an allocator are required"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	links, err := host.Links()
	if err != nil {
		return nil, err
	}
	byIndex := map[int]*listed{}
	var out []*listed
	var addrs []netlink.Addr // read once, if a pool is gone
	for _, l := range links {
		a := l.Attrs()
		m, ok := decodeNetMark(a.Alias)
		if !ok || l.Type() != "bridge" {
			continue
		}
		info := &listed{Info: Info{Index: a.Index, Config: Config{
			Name: m.Name, Bridge: a.Name, MTU: a.MTU, MAC: a.HardwareAddr,
			Internal: m.Internal, DisableICC: m.DisableICC, Labels: m.Labels,
		}}}
		// The pool has the subnets as created (ip-ranges, reserved
		// addresses) and the endpoints' addresses; if it is gone, the
		// bridge's own addresses still tell the subnets and gateways.
		pool, allocs, err := alloc.Inspect(ctx, poolName(m.Name))
		switch {
		case err == nil:
			info.Subnets = pool.Subnets
			info.allocs = make(map[string]ipam.Allocation, len(allocs))
			for _, al := range allocs {
				info.allocs[al.Owner] = al
			}
		case errors.Is(err, ipam.ErrNotFound):
			info.poolMissing = true
			if addrs == nil {
				if addrs, err = host.Addrs(nil, netlink.FAMILY_ALL); err != nil {
					return nil, err
				}
			}
			for _, ad := range addrs {
				gw, _ := netip.AddrFromSlice(ad.IP)
				ones, _ := ad.Mask.Size()
				if gw = gw.Unmap(); ad.LinkIndex == a.Index && !gw.IsLinkLocalUnicast() {
					info.Subnets = append(info.Subnets, ipam.SubnetConfig{Subnet: netip.PrefixFrom(gw, ones).Masked(), Gateway: gw})
				}
			}
		default:
			return nil, err
		}
		byIndex[a.Index] = info
		out = append(out, info)
	}
	for _, l := range links {
		a := l.Attrs()
		info, ok := byIndex[a.MasterIndex]
		if !ok {
			continue
		}
		m, ok := decodeEPMark(a.Alias)
		if !ok || m.Net != info.Name {
			continue
		}
		mac, _ := net.ParseMAC(m.MAC)
		ep := Endpoint{ID: m.ID, Network: m.Net, IfName: m.IfName, MAC: mac, HostVeth: a.Name, DefaultRoute: m.Gateway}
		if al, ok := info.allocs[endpointOwner(info.Name, m.ID)]; ok {
			ep.Addrs, ep.Since = leases(al)
		}
		info.Endpoints = append(info.Endpoints, ep)
	}
	res := make([]listed, len(out))
	for i, info := range out {
		slices.SortFunc(info.Endpoints, func(x, y Endpoint) int { return strings.Compare(x.ID, y.ID) })
		res[i] = *info
	}
	return res, nil
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
// its endpoints, like `docker network inspect`: the network of n's name,
// also if its bridge was made again since n was.
func (n *Network) Inspect(ctx context.Context) (Info, error) {
	if err := n.usable(); err != nil {
		return Info{}, err
	}
	infos, err := List(ctx, n.host, n.alloc)
	if err != nil {
		return Info{}, err
	}
	for _, i := range infos {
		if i.Name == n.cfg.Name {
			return i, nil
		}
	}
	return Info{}, fmt.Errorf("bridge: network %q: %w", n.cfg.Name, ErrNotFound)
}

// Delete removes the network: its isolation rules first, then its pool,
// then its bridge (so that a pool never outlives the bridge by which a
// later process finds the network). A network with endpoints fails with
// ErrInUse unless force is true, in which case its endpoints are detached
// first. Deleting a network that is gone succeeds, and so does deleting one
// whose bridge someone else already removed, or one that New left half
// made.
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
		// The bridge is gone; its rules and pool may not be.
		info = Info{Config: n.cfg}
	} else if err != nil {
		return err
	}
	if len(info.Endpoints) > 0 && !force {
		ids := make([]string, len(info.Endpoints))
		for i, e := range info.Endpoints {
			ids[i] = e.ID
		}
		return errs.Wrap(ErrInUse, "bridge: network %q has endpoints %v", n.cfg.Name, ids)
	}
	for _, e := range info.Endpoints {
		// The network's lock, held here, keeps every attach and detach
		// of it out.
		if err := n.detach(ctx, e.ID); err != nil {
			return err
		}
	}
	if err := nft.RemoveNetwork(ctx, n.host, n.cfg.Bridge); err != nil {
		return err
	}
	// Endpoints whose veths are gone (their containers died) may still
	// hold addresses: they go with the network.
	if _, err := n.alloc.GC(ctx, n.pool, func(string) bool { return false }); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	if err := n.alloc.DeletePool(ctx, n.pool); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	if err := step(n.cfg.Name, "delete-pool"); err != nil {
		return err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	if l, err := h.LinkByName(n.cfg.Bridge); err == nil && n.owns(l) {
		if err := h.LinkDel(l); err != nil && !nlerr.NotExist(err) {
			return &netns.OpError{Op: "bridge.delete", NS: n.host.String(), Name: n.cfg.Bridge, Err: err}
		}
	}
	return nil
}

// owns reports whether l is the network's bridge: marked as it, or half
// made by its New (its group, no mark).
func (n *Network) owns(l netlink.Link) bool {
	if l.Type() != "bridge" {
		return false
	}
	if m, ok := decodeNetMark(l.Attrs().Alias); ok {
		return m.Name == n.cfg.Name
	}
	return l.Attrs().Group == ctrlink.Group("bridge/"+n.cfg.Name)
}
