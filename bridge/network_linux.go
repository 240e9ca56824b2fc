package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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

// New creates a bridge network in host, like `docker network create`: a
// bridge (STP off, no forward delay) with the gateway addresses of its
// subnets, its MAC pinned, up, with the isolation rules that keep other
// networks' containers away, and its addresses in the pool "bridge."+Name
// of alloc.
//
// If the network exists with the same settings, New returns it; with other
// settings, or when the bridge name is taken by a link that is not the
// network's, it fails with ErrExists. A subnet overlapping another network
// of the host fails with ErrOverlap. Bad input is a *netns.ValidationError.
// A failure half way removes what was made.
func New(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, cfg Config) (*Network, error) {
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
	h, err := host.Netlink()
	if err != nil {
		return nil, err
	}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "bridge." + op, NS: host.String(), Name: cfg.Bridge, Err: err}
	}

	others, err := List(ctx, host, alloc)
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.Name == cfg.Name || o.Bridge == cfg.Bridge {
			if o.Name != cfg.Name || !sameSettings(cfg, o.Config) {
				return nil, fmt.Errorf("bridge: network %q (%s): %w", cfg.Name, o.Bridge, ErrExists)
			}
			return open(host, alloc, o), nil
		}
	}
	if l, err := h.LinkByName(cfg.Bridge); err == nil {
		return nil, fmt.Errorf("bridge: %s is taken by a %s link that is not an nsnet network: %w", cfg.Bridge, l.Type(), ErrExists)
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU(host)
	}
	if cfg.MAC == nil {
		cfg.MAC = veth.RandomMAC()
	}

	// Addresses: the IPAM fills in subnets and gateways, avoiding the
	// other networks of the host (whatever allocator made them) and the
	// host's routes.
	var taken []netip.Prefix
	for _, o := range others {
		for _, s := range o.Subnets {
			taken = append(taken, s.Subnet)
		}
	}
	for _, s := range cfg.Subnets {
		for _, t := range taken {
			if s.Subnet.Overlaps(t) {
				return nil, fmt.Errorf("bridge: network %q: subnet %s overlaps %s: %w", cfg.Name, s.Subnet, t, ErrOverlap)
			}
		}
	}
	pool := poolName(cfg.Name)
	created, err := alloc.CreatePool(ctx, ipam.PoolConfig{Name: pool, Subnets: cfg.Subnets, Avoid: host, AvoidPrefixes: taken})
	if err != nil {
		return nil, fmt.Errorf("bridge: network %q: %w", cfg.Name, err)
	}
	cfg.Subnets = created.Subnets
	undo := []func(){func() { alloc.DeletePool(context.WithoutCancel(ctx), pool) }}
	fail := func(err error) (*Network, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}

	mark, err := encodeMark(cfg.mark())
	if err != nil {
		return fail(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Bridge
	attrs.HardwareAddr = cfg.MAC
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := h.LinkAdd(br); err != nil {
		return fail(opErr("create", err))
	}
	undo = append(undo, func() { h.LinkDel(br) })
	// The mark goes on by a request of its own: the kernel ignores
	// IFLA_IFALIAS when it creates a link.
	if err := h.LinkSetAlias(br, mark); err != nil {
		return fail(opErr("mark", err))
	}
	// An MTU given at creation is not "set by the user" to the bridge
	// driver, which then follows its ports' MTUs (and falls back to 1500
	// when it has none); a change of MTU after creation pins it.
	if cfg.MTU != 1500 {
		if err := h.LinkSetMTU(br, cfg.MTU); err != nil {
			return fail(opErr("mtu", err))
		}
	}
	if err := setNoSTP(host, br.Index); err != nil {
		return fail(opErr("stp", err))
	}
	// The bridge takes no router advertisements: a container must not be
	// able to configure the host (CVE-2020-13401).
	if err := host.SetSysctl("net/ipv6/conf/"+cfg.Bridge+"/accept_ra", "0"); err != nil {
		return fail(err)
	}
	// Strict reverse-path filtering: a packet that comes in on the bridge
	// with a source address the host would not route back out of it (a
	// container forging another network's or the world's address) is
	// dropped (RELIABILITY rule 15).
	if err := host.SetSysctl("net/ipv4/conf/"+cfg.Bridge+"/rp_filter", "1"); err != nil {
		return fail(err)
	}
	for _, s := range cfg.Subnets {
		a := &netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(s.Gateway, s.Subnet.Bits()))}
		if s.Gateway.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(br, a); err != nil {
			return fail(opErr("address", err))
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return fail(opErr("up", err))
	}
	if err := nft.AddNetwork(ctx, host, nftNetwork(cfg)); err != nil {
		return fail(err)
	}
	return &Network{host: host, alloc: alloc, cfg: cfg, index: br.Index, pool: pool}, nil
}

func nftNetwork(cfg Config) nft.Network {
	n := nft.Network{Bridge: cfg.Bridge, Internal: cfg.Internal, ICC: !cfg.DisableICC}
	for _, s := range cfg.Subnets {
		n.Subnets = append(n.Subnets, s.Subnet)
	}
	return n
}

// sameSettings compares what the caller asked for with what exists; fields
// the caller left to be chosen are not compared.
func sameSettings(want, have Config) bool {
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
	if len(want.Subnets) == 0 {
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
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	links, err := host.Links()
	if err != nil {
		return nil, err
	}
	type listed struct {
		Info
		allocs map[string]ipam.Allocation
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
	res := make([]Info, len(out))
	for i, info := range out {
		slices.SortFunc(info.Endpoints, func(x, y Endpoint) int { return strings.Compare(x.ID, y.ID) })
		res[i] = info.Info
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
// its endpoints, like `docker network inspect`.
func (n *Network) Inspect(ctx context.Context) (Info, error) {
	infos, err := List(ctx, n.host, n.alloc)
	if err != nil {
		return Info{}, err
	}
	for _, i := range infos {
		if i.Index == n.index && i.Name == n.cfg.Name {
			return i, nil
		}
	}
	return Info{}, fmt.Errorf("bridge: network %q: %w", n.cfg.Name, ErrNotFound)
}

// Delete removes the network: its isolation rules first, then its bridge,
// then its pool. A network with endpoints fails with ErrInUse unless force
// is true, in which case its endpoints are detached first. Deleting a
// network that is gone succeeds, and so does deleting one whose bridge
// someone else already removed.
func (n *Network) Delete(ctx context.Context, force bool) error {
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
		return fmt.Errorf("bridge: network %q has endpoints %v: %w", n.cfg.Name, ids, ErrInUse)
	}
	for _, e := range info.Endpoints {
		if err := n.Detach(ctx, e.ID); err != nil {
			return err
		}
	}
	if err := nft.RemoveNetwork(ctx, n.host, n.cfg.Bridge); err != nil {
		return err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	if l, err := h.LinkByName(n.cfg.Bridge); err == nil {
		if m, ok := decodeNetMark(l.Attrs().Alias); ok && m.Name == n.cfg.Name {
			if err := h.LinkDel(l); err != nil && !nlerr.NotExist(err) {
				return &netns.OpError{Op: "bridge.delete", NS: n.host.String(), Name: n.cfg.Bridge, Err: err}
			}
		}
	}
	// Endpoints whose veths are gone (their containers died) may still
	// hold addresses: they go with the network.
	if _, err := n.alloc.GC(ctx, n.pool, func(string) bool { return false }); err != nil {
		return err
	}
	if err := n.alloc.DeletePool(ctx, n.pool); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	return nil
}
