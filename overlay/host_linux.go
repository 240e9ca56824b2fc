package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Host is one host's part of the overlays: the local devices of each
// network, the host's endpoints, and the control plane that programs the
// other hosts' endpoints into the kernel. Safe for concurrent use.
type Host struct {
	cfg      HostConfig
	underlay int // the underlay link's index
	mtu      int // the overlays' MTU: the underlay's minus VXLAN's overhead

	mu     sync.Mutex
	closed bool
	view   map[string][]byte // the store's keys under the prefix, as last seen
	local  map[string]uint32 // networks whose devices exist here: name -> VNI
	ports  map[uint32]uint16 // their VXLAN ports, by VNI
	// filtered is the ingress filters as last programmed; recheck: read
	// them back from the kernel at the next programming (a heartbeat).
	filtered string
	recheck  bool
	// defined: the networks the view held when the kernel was last
	// programmed.
	defined map[string]bool
	// names: what the control plane has registered in cfg.DNS, by network
	// and name (the addresses, as a string, to see a change).
	names map[string]map[string]string
	prog  map[entry]bool    // what the control plane has put into the kernel
	mine  map[string][]byte // this host's endpoint records, to publish again if lost
	// beats holds, per host record seen, its value and when (by this
	// host's clock) it last changed: a host whose record has not changed
	// for LeaseTTL is dead. Judging by the observer's clock makes no two
	// hosts' clocks need to agree.
	beats  map[string]beat
	ready  chan struct{} // closed once the first List is applied
	wakeup chan struct{} // the view changed: program the kernel

	arpFD int // a packet socket in NS for announce; -1 until needed; h.mu

	// closeMu serialises Close; storeDone and kernelDone are its parts
	// that succeeded.
	closeMu               sync.Mutex
	storeDone, kernelDone bool

	gwMu sync.Mutex
	gw   *bridge.Network // the gateway bridge, made at the first need

	cancel context.CancelFunc
	done   chan struct{}
}

// gatewayName is the host's gateway bridge network, for egress, and
// gatewayBridge its bridge.
const (
	gatewayName   = "overlay_gwbridge"
	gatewayBridge = "ovgwbridge"
)

// gateway returns the host's gateway bridge network, creating it (with
// its masquerade) at the first call.
func (h *Host) gateway(ctx context.Context) (*bridge.Network, error) {
	h.gwMu.Lock()
	defer h.gwMu.Unlock()
	if h.gw != nil {
		return h.gw, nil
	}
	alloc := h.cfg.GatewayAlloc
	if alloc == nil {
		var err error
		if alloc, err = ipam.New(ipam.NewMemoryStore(), ipam.Config{}); err != nil {
			return nil, err
		}
		h.cfg.GatewayAlloc = alloc
	}
	gw, err := bridge.New(ctx, h.cfg.NS, alloc, bridge.Config{Name: gatewayName, Bridge: gatewayBridge})
	if err != nil {
		return nil, err
	}
	cfg := gw.Config()
	masq := nat.Network{Bridge: cfg.Bridge}
	for _, s := range cfg.Subnets {
		masq.Subnets = append(masq.Subnets, s.Subnet)
	}
	if err := nat.Masquerade(ctx, h.cfg.NS, masq); err != nil {
		gw.Delete(context.WithoutCancel(ctx), true)
		return nil, err
	}
	h.gw = gw
	return gw, nil
}

// gatewayID is an endpoint's ID on the gateway bridge.
func gatewayID(network, id string) string { return network + "." + id }

// Join starts the host's part of the overlays: it publishes the host,
// creates the devices of every network defined in the store, and keeps the
// kernel in step with the other hosts' endpoints until Close.
func Join(ctx context.Context, cfg HostConfig) (*Host, error) {
	if cfg.NS == nil || cfg.Store == nil || cfg.Alloc == nil {
		return nil, invalid("HostConfig", nil, "NS, Store and Alloc are required")
	}
	if r := names.Check(cfg.Name, 64); r != "" {
		return nil, invalid("Name", cfg.Name, r)
	}
	if !cfg.VTEP.Is4() {
		return nil, invalid("VTEP", cfg.VTEP, "not an IPv4 address")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "overlay/"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.LeaseTTL < 30*time.Millisecond {
		return nil, invalid("LeaseTTL", cfg.LeaseTTL, "under 30 ms")
	}
	link, err := linkWithAddr(cfg.NS, cfg.VTEP)
	if err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, underlay: link.Attrs().Index, mtu: link.Attrs().MTU - vxlanOverhead,
		view: map[string][]byte{}, local: map[string]uint32{}, ports: map[uint32]uint16{}, prog: map[entry]bool{},
		mine: map[string][]byte{}, beats: map[string]beat{}, defined: map[string]bool{}, arpFD: -1,
		names: map[string]map[string]string{},
		ready: make(chan struct{}), wakeup: make(chan struct{}, 1), done: make(chan struct{})}
	if err := h.put(ctx, hostPrefix+cfg.Name, encode(hostRecord{VTEP: cfg.VTEP, Seen: time.Now()})); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.cancel = cancel
	go h.run(runCtx)
	select {
	case <-h.ready:
		return h, nil
	case <-ctx.Done():
		h.Close(context.WithoutCancel(ctx))
		return nil, ctx.Err()
	}
}

// linkWithAddr finds the link of ns that has addr.
func linkWithAddr(ns *netns.NS, addr netip.Addr) (netlink.Link, error) {
	addrs, err := ns.Addrs(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	nl, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == addr {
			return nl.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, invalid("VTEP", addr, "not an address of the host")
}

func (h *Host) key(k string) string { return h.cfg.Prefix + k }

// put writes key whatever its revision.
func (h *Host) put(ctx context.Context, key string, val []byte) error {
	for {
		kv, err := h.cfg.Store.Get(ctx, h.key(key))
		if err != nil && !errors.Is(err, ipam.ErrNotFound) {
			return err
		}
		_, err = h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(key), Rev: kv.Rev, Value: val})
		if !errors.Is(err, ipam.ErrConflict) {
			return err
		}
	}
}

// claim writes an endpoint's claim at key (whatever its revision) in one
// transaction with network's definition, written again as it is at the
// revision read: a Delete of the network on any host either commits
// first (the claim fails with ErrNotFound) or sees the claim (and fails
// with ErrInUse), never neither (an endpoint of a network that is gone).
func (h *Host) claim(ctx context.Context, network, key string, val []byte) error {
	for {
		def, err := h.cfg.Store.Get(ctx, h.key(netPrefix+network))
		if errors.Is(err, ipam.ErrNotFound) {
			return fmt.Errorf("overlay: network %q: %w", network, ErrNotFound)
		}
		if err != nil {
			return err
		}
		kv, err := h.cfg.Store.Get(ctx, h.key(key))
		if err != nil && !errors.Is(err, ipam.ErrNotFound) {
			return err
		}
		_, err = h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(key), Rev: kv.Rev, Value: val},
			ipam.Op{Key: h.key(netPrefix + network), Rev: def.Rev, Value: def.Value})
		if !errors.Is(err, ipam.ErrConflict) {
			return err
		}
	}
}

// del deletes key; a key that is gone is no error.
func (h *Host) del(ctx context.Context, key string) error {
	for {
		kv, err := h.cfg.Store.Get(ctx, h.key(key))
		if errors.Is(err, ipam.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		_, err = h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(key), Rev: kv.Rev, Delete: true})
		if !errors.Is(err, ipam.ErrConflict) {
			return err
		}
	}
}

// Create defines a network for every host, like `docker network create -d
// overlay`: the other hosts create its devices when they see it. A network
// that exists with the same settings is returned; with others, or with a
// VNI another network has, Create fails with ErrExists. Its address pool
// is made first, so that a network whose subnets another pool has is
// refused (matching ipam.ErrOverlap) before any host sees it.
func (h *Host) Create(ctx context.Context, cfg Config) (*Network, error) {
	if err := h.check(true); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.MTU > h.mtu {
		return nil, invalid("MTU", cfg.MTU, fmt.Sprintf("does not fit the underlay: at most %d", h.mtu))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	val := encode(cfg)
	exists := func() error { return fmt.Errorf("overlay: network %q (VNI %d): %w", cfg.Name, cfg.VNI, ErrExists) }
	same := func() (bool, error) {
		have, err := h.definition(ctx, cfg.Name)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if string(encode(have)) != string(val) {
			return false, exists()
		}
		return true, nil
	}
	defined, err := same()
	if err != nil {
		return nil, err
	}
	pool := poolName(cfg.Name)
	_, _, err = h.cfg.Alloc.Inspect(ctx, pool)
	made := errors.Is(err, ipam.ErrNotFound) // the pool is this call's
	if err != nil && !made {
		return nil, err
	}
	if _, err := h.cfg.Alloc.CreatePool(ctx, ipam.PoolConfig{Name: pool, Subnets: cfg.Subnets}); err != nil {
		if errors.Is(err, ipam.ErrExists) {
			return nil, fmt.Errorf("%w: %w", exists(), err)
		}
		return nil, fmt.Errorf("overlay: network %q: %w", cfg.Name, err)
	}
	step(cfg.Name, "pool")
	if defined {
		// A Delete killed half way may have taken the VNI's key.
		vni := fmt.Sprintf("vni/%d", cfg.VNI)
		if _, err := h.cfg.Store.Get(ctx, h.key(vni)); errors.Is(err, ipam.ErrNotFound) {
			if _, err := h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(vni), Value: []byte(cfg.Name)}); err != nil && !errors.Is(err, ipam.ErrConflict) {
				return nil, err
			}
		} else if err != nil {
			return nil, err
		}
	}
	if !defined {
		_, err := h.cfg.Store.CAS(ctx,
			ipam.Op{Key: h.key(netPrefix + cfg.Name), Value: val},
			ipam.Op{Key: h.key(fmt.Sprintf("vni/%d", cfg.VNI)), Value: []byte(cfg.Name)})
		if errors.Is(err, ipam.ErrConflict) {
			// Another Create of the same network won, or the name or VNI
			// is taken.
			if ok, serr := same(); !ok {
				err = serr
				if err == nil {
					err = exists()
				}
			} else {
				err = nil
			}
		}
		if err != nil {
			if made {
				h.cfg.Alloc.DeletePool(context.WithoutCancel(ctx), pool)
			}
			return nil, err
		}
		step(cfg.Name, "define")
	}
	return h.Network(ctx, cfg.Name)
}

// check returns an error if h is nil or was not made by Join, or, with
// open, if it was closed.
func (h *Host) check(open bool) error {
	if h == nil || h.done == nil {
		return invalid("Host", nil, "nil, or not made by Join")
	}
	if open {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.closed {
			return ErrClosed
		}
	}
	return nil
}

func (h *Host) definition(ctx context.Context, name string) (Config, error) {
	kv, err := h.cfg.Store.Get(ctx, h.key(netPrefix+name))
	if errors.Is(err, ipam.ErrNotFound) {
		return Config{}, fmt.Errorf("overlay: network %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Config{}, err
	}
	var cfg Config
	if err := json.Unmarshal(kv.Value, &cfg); err != nil {
		return Config{}, fmt.Errorf("overlay: network %q: bad record: %w", name, err)
	}
	return cfg, nil
}

// Network returns the network name, defined by any host, with its devices
// on this host (created if the control plane has not yet). Devices that
// are there are checked and repaired: made again if gone, the VXLAN device
// a port of the bridge, both up, the entries the control plane programmed
// and the ingress filter put in again if someone removed them.
func (h *Host) Network(ctx context.Context, name string) (*Network, error) {
	if err := h.check(true); err != nil {
		return nil, err
	}
	if r := names.Check(name, 64); r != "" {
		return nil, invalid("Name", name, r)
	}
	cfg, err := h.definition(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := h.repairLocal(cfg); err != nil {
		return nil, err
	}
	return &Network{h: h, cfg: cfg}, nil
}

// repairLocal makes the network's devices on this host whole (see ensureLocal)
// and, if they were there, programs what they lacked at once.
func (h *Host) repairLocal(cfg Config) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	again, err := h.ensureLocal(cfg)
	h.mu.Unlock()
	if err != nil {
		return err
	}
	if again {
		h.program()
	}
	return nil
}

// ensureLocal makes the network's bridge and VXLAN device on this host
// what they should be, doing only what is missing: made (each with the
// network's device group in the creating request), the VXLAN device a port
// of the bridge, both up. For a network already local it also checks what
// the control plane programmed: entries that left the kernel behind its
// back are forgotten, and the ingress filter is read back, so that the
// next programming puts them in again. It returns whether that
// programming is needed now. h.mu is held.
func (h *Host) ensureLocal(cfg Config) (bool, error) {
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return false, err
	}
	opErr := func(op, name string, err error) error {
		return &netns.OpError{Op: "overlay." + op, NS: h.cfg.NS.String(), Name: name, Err: err}
	}
	_, wasLocal := h.local[cfg.Name]
	brName, vxName := bridgeName(cfg.VNI), vxlanName(cfg.VNI)
	madeBr := false
	br, err := nl.LinkByName(brName)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.Group = brName, h.mtu, netGroup(cfg.VNI)
		if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return false, opErr("bridge", brName, err)
		}
		if br, err = nl.LinkByName(brName); err != nil {
			return false, opErr("bridge", brName, err)
		}
		madeBr = true
		step(cfg.Name, "bridge")
	} else if br.Attrs().Group != netGroup(cfg.VNI) {
		// Made by an earlier version: marked now.
		if err := nl.LinkSetGroup(br, int(netGroup(cfg.VNI))); err != nil {
			return false, opErr("group", brName, err)
		}
	}
	port := uint16(cfg.Port)
	if port == 0 {
		port = DefaultPort
	}
	vx, vxErr := nl.LinkByName(vxName)
	if vxErr == nil {
		if !wasLocal {
			// An earlier process made it: what it programmed is this
			// process's to keep or remove.
			if err := h.adopt(nl, vx, cfg.VNI); err != nil {
				return false, opErr("vxlan", vxName, err)
			}
		} else if err := h.recheckEntries(nl, vx, cfg.VNI); err != nil {
			return false, opErr("vxlan", vxName, err)
		}
	} else {
		// Gone with its entries (or never made): they are to program.
		for e := range h.prog {
			if e.vni == cfg.VNI {
				delete(h.prog, e)
			}
		}
	}
	// The ingress filter before the device: from its first packet, the
	// device hears only the network's peers (those adopted, if any, until
	// the control plane programs them).
	if vxErr != nil || !wasLocal {
		if err := nft.SetVXLAN(context.Background(), h.cfg.NS, nil, []nft.VXLAN{h.filter(cfg.VNI, port, h.prog)}); err != nil {
			if madeBr {
				nl.LinkDel(br)
			}
			return false, opErr("filter", vxName, err)
		}
		step(cfg.Name, "filter")
	}
	if vxErr != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.MasterIndex, attrs.Group = vxName, h.mtu, br.Attrs().Index, netGroup(cfg.VNI)
		vx = &netlink.Vxlan{LinkAttrs: attrs, VxlanId: int(cfg.VNI), VtepDevIndex: h.underlay,
			SrcAddr: h.cfg.VTEP.AsSlice(), Port: int(port), Learning: false, Proxy: true}
		if err := nl.LinkAdd(vx); err != nil && !errors.Is(err, unix.EEXIST) {
			if madeBr {
				nl.LinkDel(br)
			}
			if !wasLocal {
				nft.SetVXLAN(context.Background(), h.cfg.NS, []uint32{cfg.VNI}, nil)
			}
			return false, opErr("vxlan", vxName, err)
		}
		if vx, err = nl.LinkByName(vxName); err != nil {
			return false, opErr("vxlan", vxName, err)
		}
		step(cfg.Name, "vxlan")
	} else if vx.Attrs().Group != netGroup(cfg.VNI) {
		if err := nl.LinkSetGroup(vx, int(netGroup(cfg.VNI))); err != nil {
			return false, opErr("group", vxName, err)
		}
	}
	if vx.Attrs().MasterIndex != br.Attrs().Index {
		if err := nl.LinkSetMasterByIndex(vx, br.Attrs().Index); err != nil {
			return false, opErr("port", vxName, err)
		}
	}
	for _, l := range []netlink.Link{vx, br} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := nl.LinkSetUp(l); err != nil {
				return false, opErr("up", l.Attrs().Name, err)
			}
		}
	}
	h.local[cfg.Name] = cfg.VNI
	h.ports[cfg.VNI] = port
	if wasLocal {
		h.recheck = true
	}
	return wasLocal, nil
}

// recheckEntries forgets the entries of network vni that h.prog holds and
// the kernel does not, so that the next programming puts them in again.
func (h *Host) recheckEntries(nl *netlink.Handle, vx netlink.Link, vni uint32) error {
	have, err := kernelEntries(nl, vx, vni)
	if err != nil {
		return err
	}
	for e := range h.prog {
		if e.vni == vni && !have[e] {
			delete(h.prog, e)
		}
	}
	return nil
}

// adopt takes the entries an earlier process put on the VXLAN device into
// h.prog, so that the next programming removes those that are stale.
func (h *Host) adopt(nl *netlink.Handle, vx netlink.Link, vni uint32) error {
	have, err := kernelEntries(nl, vx, vni)
	for e := range have {
		h.prog[e] = true
	}
	return err
}

// kernelEntries returns the entries of the VXLAN device vx of network vni:
// its FDB entries with a VTEP (flood entries: all-zero MAC), and its
// permanent neighbour entries.
func kernelEntries(nl *netlink.Handle, vx netlink.Link, vni uint32) (map[entry]bool, error) {
	out := map[entry]bool{}
	fdb, err := nl.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, err
	}
	for _, n := range fdb {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.HardwareAddr == nil {
			continue
		}
		e := entry{kind: fdbEntry, vni: vni, mac: n.HardwareAddr.String(), ip: ip.Unmap()}
		if string(n.HardwareAddr) == string(make(net.HardwareAddr, 6)) {
			e = entry{kind: floodEntry, vni: vni, ip: ip.Unmap()}
		}
		out[e] = true
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neigh, err := nl.NeighList(vx.Attrs().Index, fam)
		if err != nil {
			return nil, err
		}
		for _, n := range neigh {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddr != nil {
				out[entry{kind: neighEntry, vni: vni, mac: n.HardwareAddr.String(), ip: ip.Unmap()}] = true
			}
		}
	}
	return out, nil
}

// filter is the ingress filter of the network vni: its peers are the
// VTEPs of the flood entries of entries, the hosts that have endpoints on
// it.
func (h *Host) filter(vni uint32, port uint16, entries map[entry]bool) nft.VXLAN {
	f := nft.VXLAN{VNI: vni, Port: port}
	for e := range entries {
		if e.kind == floodEntry && e.vni == vni && e.ip.Is4() {
			f.Peers = append(f.Peers, e.ip)
		}
	}
	return f
}

// removeLocal deletes the network's devices on this host, then their
// ingress filter. h.mu is held.
func (h *Host) removeLocal(name string, vni uint32) {
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return
	}
	for _, n := range []string{vxlanName(vni), bridgeName(vni)} {
		if l, err := nl.LinkByName(n); err == nil {
			if err := nl.LinkDel(l); err != nil && !nlerr.NotExist(err) {
				h.cfg.Logger.Error("overlay: delete device", "link", n, "err", err)
			}
		}
	}
	if _, err := nl.LinkByName(vxlanName(vni)); err != nil {
		if err := nft.SetVXLAN(context.Background(), h.cfg.NS, []uint32{vni}, nil); err != nil {
			h.cfg.Logger.Error("overlay: remove the ingress filter", "vni", vni, "err", err)
		}
	}
	delete(h.local, name)
	delete(h.ports, vni)
	for e := range h.prog {
		if e.vni == vni {
			delete(h.prog, e)
		}
	}
}

// Close says goodbye: the host's records go from the store, so that the
// other hosts drop its endpoints, and its devices and endpoints go from the
// kernel. The networks stay defined for the other hosts.
//
// The kernel's part does not need the store: with the store unreachable
// or ctx done, Close still removes the host's devices and endpoints, and
// returns the store's error; a later Close does what is left of the store's
// part (the other hosts also drop a silent host after its lease). Once
// both are done, Close returns nil.
func (h *Host) Close(ctx context.Context) error {
	if err := h.check(false); err != nil {
		return err
	}
	h.mu.Lock()
	first := !h.closed
	h.closed = true
	h.mu.Unlock()
	if first {
		h.cancel()
		<-h.done
	}
	h.closeMu.Lock()
	defer h.closeMu.Unlock()
	var errs []error
	if !h.storeDone {
		err := h.goodbye(ctx)
		h.storeDone = err == nil
		errs = append(errs, err)
	}
	if !h.kernelDone {
		err := h.removeDevices(context.WithoutCancel(ctx))
		h.kernelDone = err == nil
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// goodbye deletes the host's endpoint records, releasing their
// addresses, then its host record.
func (h *Host) goodbye(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	kvs, _, err := h.cfg.Store.List(ctx, h.key(epPrefix))
	if err != nil {
		return err
	}
	var errs []error
	for _, kv := range kvs {
		var r epRecord
		if json.Unmarshal(kv.Value, &r) != nil || r.Host != h.cfg.Name {
			continue
		}
		key := kv.Key[len(h.cfg.Prefix):]
		parts := strings.SplitN(strings.TrimPrefix(key, epPrefix), "/", 3)
		if len(parts) != 3 {
			continue
		}
		if err := h.del(ctx, key); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, h.cfg.Alloc.Release(ctx, poolName(parts[0]), parts[2]))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return h.del(ctx, hostPrefix+h.cfg.Name)
}

// removeDevices removes the host's endpoints (the veths on its overlays'
// bridges, whoever made them, and the gateway bridge with its endpoints),
// then the overlays' devices and their ingress filters.
func (h *Host) removeDevices(ctx context.Context) error {
	var errs []error
	h.mu.Lock()
	clear(h.mine)
	nl, err := h.cfg.NS.Netlink()
	if err == nil {
		bridges := map[int]bool{}
		for _, vni := range h.local {
			if br, err := nl.LinkByName(bridgeName(vni)); err == nil {
				bridges[br.Attrs().Index] = true
			}
		}
		links, err := h.cfg.NS.Links()
		errs = append(errs, err)
		for _, l := range links {
			if l.Type() == "veth" && bridges[l.Attrs().MasterIndex] {
				errs = append(errs, veth.Delete(ctx, h.cfg.NS, l.Attrs().Name))
			}
		}
	}
	errs = append(errs, err)
	for name, vni := range h.local {
		h.removeLocal(name, vni)
	}
	if h.arpFD >= 0 {
		unix.Close(h.arpFD)
		h.arpFD = -1
	}
	h.mu.Unlock()
	h.gwMu.Lock()
	if h.gw != nil {
		err := h.gw.Delete(ctx, true)
		if err == nil {
			h.gw = nil
		}
		errs = append(errs, err)
	}
	h.gwMu.Unlock()
	return errors.Join(errs...)
}

// Stats returns the host's counters.
func (h *Host) Stats(ctx context.Context) (Stats, error) {
	if err := h.check(false); err != nil {
		return Stats{}, err
	}
	in, out, err := nft.VXLANDrops(ctx, h.cfg.NS)
	return Stats{VXLANDropped: in, VXLANEgressDropped: out}, err
}

// Delete removes a network from every host, like `docker network rm`: its
// definition and address pool go from the store; this host's devices go
// at once, and each other host removes its own when it sees that. A network with endpoints on any host is
// refused with ErrInUse; one that is gone is no error.
func (h *Host) Delete(ctx context.Context, name string) error {
	if err := h.check(false); err != nil {
		return err
	}
	if r := names.Check(name, 64); r != "" {
		return invalid("Name", name, r)
	}
	// The definition and its VNI go in one transaction at the revisions
	// the check saw: an Attach's claim (on any host) writes the
	// definition again with it, so a claim made after the check makes the
	// transaction fail, and the check is made again.
	var cfg Config
	for {
		def, err := h.cfg.Store.Get(ctx, h.key(netPrefix+name))
		if errors.Is(err, ipam.ErrNotFound) {
			// What a Create or Delete killed half way left: the pool.
			if err := h.cfg.Alloc.DeletePool(ctx, poolName(name)); err != nil && !errors.Is(err, ipam.ErrNotFound) {
				return err
			}
			return nil
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(def.Value, &cfg); err != nil {
			return fmt.Errorf("overlay: network %q: bad record: %w", name, err)
		}
		eps, _, err := h.cfg.Store.List(ctx, h.key(epPrefix+name+"/"))
		if err != nil {
			return err
		}
		if len(eps) > 0 {
			return fmt.Errorf("overlay: network %q has %d endpoints: %w", name, len(eps), ErrInUse)
		}
		step(name, "checked")
		ops := []ipam.Op{{Key: h.key(netPrefix + name), Rev: def.Rev, Delete: true}}
		vniKey := h.key(fmt.Sprintf("vni/%d", cfg.VNI))
		vni, err := h.cfg.Store.Get(ctx, vniKey)
		switch {
		case err == nil:
			ops = append(ops, ipam.Op{Key: vniKey, Rev: vni.Rev, Delete: true})
		case !errors.Is(err, ipam.ErrNotFound):
			return err
		}
		_, err = h.cfg.Store.CAS(ctx, ops...)
		if err == nil {
			break
		}
		if !errors.Is(err, ipam.ErrConflict) {
			return err
		}
	}
	step(name, "define")
	// This host's devices go now; the others' when they see it.
	h.mu.Lock()
	delete(h.view, netPrefix+name)
	if vni, ok := h.local[name]; ok {
		h.removeLocal(name, vni)
	}
	h.mu.Unlock()
	if err := h.cfg.Alloc.DeletePool(ctx, poolName(name)); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	h.kick()
	return nil
}

// Network is an overlay network as seen from one host.
type Network struct {
	h   *Host
	cfg Config
}

// Config returns the network's settings; a nil Network's are zero.
func (n *Network) Config() Config {
	if n == nil {
		return Config{}
	}
	return n.cfg
}

// check returns an error if n is nil or was not made by its Host, or,
// with open, if its Host was closed.
func (n *Network) check(open bool) error {
	if n == nil || n.h == nil {
		return invalid("Network", nil, "nil, or not made by Host.Create or Host.Network")
	}
	return n.h.check(open)
}

func (n *Network) epKey(id string) string {
	return epPrefix + n.cfg.Name + "/" + n.h.cfg.Name + "/" + id
}

// hostVeth names the host end of an endpoint's veth pair.
func hostVeth(network, id string) string {
	sum := sha256.Sum256([]byte("nsnet/overlay/" + network + "/" + id))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

// Attach connects a container to the overlay: a veth pair whose container
// end (eth0) has an address of each subnet, allocated cluster-wide, and the
// overlay's MTU; then the endpoint is published for the other hosts.
// Attaching an endpoint again returns it, repaired (see "Crashes, drift
// and recovery" in the package doc). Bad input (the host's own
// namespace among it) is refused with a *ValidationError before the store
// or the kernel is touched; a network deleted meanwhile with ErrNotFound.
// A failure half way leaves nothing, and leaves an endpoint attached
// before as it was.
func (n *Network) Attach(ctx context.Context, ec EndpointConfig) (Endpoint, error) {
	if err := n.check(true); err != nil {
		return Endpoint{}, err
	}
	if r := names.Check(ec.ID, 64); r != "" {
		return Endpoint{}, invalid("ID", ec.ID, r)
	}
	if ec.NS == nil {
		return Endpoint{}, invalid("NS", nil, "no container namespace")
	}
	h := n.h
	if ec.NS.Equal(h.cfg.NS) {
		return Endpoint{}, invalid("NS", ec.NS.String(), "the host's own namespace, not a container's")
	}
	for _, a := range ec.Aliases {
		if r := names.Check(a, 63); r != "" || strings.ContainsRune(a, '.') {
			return Endpoint{}, invalid("Aliases", a, "not a DNS label")
		}
	}
	if ec.IfName == "" {
		ec.IfName = "eth0"
	}
	if r := ifname.Check(ec.IfName); r != "" {
		return Endpoint{}, invalid("IfName", ec.IfName, r)
	}
	if ec.MAC != nil && (len(ec.MAC) != 6 || ec.MAC[0]&1 != 0 || string(ec.MAC) == string(make(net.HardwareAddr, 6))) {
		return Endpoint{}, invalid("MAC", ec.MAC.String(), "not a unicast Ethernet address")
	}
	if err := ctx.Err(); err != nil {
		return Endpoint{}, err
	}
	unlock, err := lockEndpoint(h.cfg.NS, n.cfg.Name, ec.ID)
	if err != nil {
		return Endpoint{}, err
	}
	defer unlock(false)
	hn, err := h.cfg.NS.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	notFound := func() (Endpoint, error) {
		return Endpoint{}, fmt.Errorf("overlay: attach %s: network %q: %w", ec.ID, n.cfg.Name, ErrNotFound)
	}
	if _, err := hn.LinkByName(bridgeName(n.cfg.VNI)); err != nil {
		// Someone removed the network's devices here: made again, if
		// it is still defined.
		cfg, err := h.definition(ctx, n.cfg.Name)
		if errors.Is(err, ErrNotFound) || err == nil && cfg.VNI != n.cfg.VNI {
			return notFound()
		}
		if err != nil {
			return Endpoint{}, err
		}
		if err := h.repairLocal(n.cfg); err != nil {
			return Endpoint{}, err
		}
	}
	// Attached before: a failure now must not undo that endpoint. A
	// pending record (a call killed half way) is not an attachment, but
	// its MAC is kept, so that what that call made is found.
	var prev, old *epRecord
	key := n.epKey(ec.ID)
	if kv, err := h.cfg.Store.Get(ctx, h.key(key)); err == nil {
		var r epRecord
		if json.Unmarshal(kv.Value, &r) == nil && r.Host == h.cfg.Name {
			prev = &r
			if !r.Pending {
				old = &r
			}
		}
	} else if !errors.Is(err, ipam.ErrNotFound) {
		return Endpoint{}, err
	}
	// What the kernel has of the endpoint: its host veth, its mark, and
	// the container's interface on the other end.
	name := hostVeth(n.cfg.Name, ec.ID)
	var mark epMark
	var marked bool
	var hint []netip.Addr
	if prev != nil {
		hint = prev.Addrs
	}
	if l, err := hn.LinkByName(name); err == nil && l.Attrs().Group == epGroup(n.cfg.Name, ec.ID) {
		mark, marked = decodeEPMark(l.Attrs().Alias)
		if hint == nil {
			if cn, err := ec.NS.Netlink(); err == nil {
				if p, err := cn.LinkByName(ec.IfName); err == nil && p.Attrs().ParentIndex == l.Attrs().Index {
					hint = ctrlink.Addrs(ec.NS, p, n.cfg.Subnets)
				}
			}
		}
	}
	mac := ec.MAC
	if mac == nil && prev != nil {
		// Attached before: the same MAC, so that the same pair is found.
		mac = prev.mac()
	}
	if mac == nil && marked {
		mac, _ = net.ParseMAC(mark.MAC)
	}
	if mac == nil {
		mac = veth.RandomMAC()
	}
	mtu := h.mtu
	if n.cfg.MTU != 0 {
		mtu = min(mtu, n.cfg.MTU)
	}
	ep := Endpoint{ID: ec.ID, IfName: ec.IfName, MAC: mac, MTU: mtu}
	rec := epRecord{Host: h.cfg.Name, VTEP: h.cfg.VTEP, MAC: mac.String(), Aliases: ec.Aliases}

	var undo []func()
	fail := func(err error) (Endpoint, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return Endpoint{}, err
	}
	// The claim first: from now on a process killed half way leaves a
	// record of this host by which GC finds what it made.
	if old == nil {
		claim := rec
		claim.Pending = true
		if err := h.claim(ctx, n.cfg.Name, key, encode(claim)); err != nil {
			return Endpoint{}, err
		}
		undo = append(undo, func() { h.del(context.WithoutCancel(ctx), key) })
		step(n.cfg.Name, "claim")
	}
	// The addresses the endpoint had (its record, its interface) are
	// asked for again, so that an allocation lost behind nsnet's back
	// comes back as it was.
	pool := poolName(n.cfg.Name)
	alloc, err := h.cfg.Alloc.Allocate(ctx, pool, ec.ID, hint...)
	if err != nil && len(hint) > 0 && !errors.Is(err, ipam.ErrNotFound) {
		alloc, err = h.cfg.Alloc.Allocate(ctx, pool, ec.ID)
	}
	if errors.Is(err, ipam.ErrNotFound) {
		fail(nil)
		return notFound()
	}
	if err != nil {
		return fail(fmt.Errorf("overlay: attach %s: %w", ec.ID, err))
	}
	if old == nil {
		undo = append(undo, func() { h.cfg.Alloc.Release(context.WithoutCancel(ctx), pool, ec.ID) })
	}
	step(n.cfg.Name, "allocate")
	for _, l := range alloc.Leases() {
		ep.Addrs = append(ep.Addrs, l.Addr)
		rec.Addrs = append(rec.Addrs, l.Addr.Addr())
	}
	// Published before the interface is made: the other hosts program
	// the endpoint meanwhile, so that its first packets find them ready.
	publish := func() error {
		val := encode(rec)
		h.mu.Lock()
		h.mine[key] = val
		h.mu.Unlock()
		return h.put(ctx, key, val)
	}
	if old == nil {
		undo = append(undo, func() {
			h.mu.Lock()
			delete(h.mine, key)
			h.mu.Unlock()
		})
	}
	if err := publish(); err != nil {
		return fail(err)
	}
	step(n.cfg.Name, "publish")

	vcfg := veth.Config{Name: name, MTU: mtu, Up: true, Group: epGroup(n.cfg.Name, ec.ID),
		Peer: veth.End{NS: ec.NS, Name: ec.IfName, MAC: mac}}
	ends, err := veth.Pair(ctx, h.cfg.NS, vcfg)
	if errors.Is(err, os.ErrExist) {
		// The endpoint's pair into this container, not as asked (down,
		// another MTU or MAC): repaired in place.
		var ok bool
		if ends, ok = n.adoptPair(vcfg); ok {
			err = nil
			if string(ends.Peer.MAC) != string(mac) {
				mac, ep.MAC, rec.MAC = ends.Peer.MAC, ends.Peer.MAC, ends.Peer.MAC.String()
				if err = publish(); err != nil {
					return fail(err)
				}
			}
		}
	}
	if err != nil {
		return fail(err)
	}
	if old == nil {
		undo = append(undo, func() { veth.Delete(context.WithoutCancel(ctx), h.cfg.NS, name) })
	}
	step(n.cfg.Name, "veth")
	opErr := func(ns *netns.NS, name string, err error) (Endpoint, error) {
		return fail(&netns.OpError{Op: "overlay.attach", NS: ns.String(), Name: name, Err: err})
	}
	hl := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ends.Host.Index, Name: name}}
	if alias := (epMark{Net: n.cfg.Name, ID: ec.ID, IfName: ec.IfName, MAC: mac.String()}).encode(); !marked || mark.encode() != alias {
		if err := hn.LinkSetAlias(hl, alias); err != nil {
			return opErr(h.cfg.NS, name, err)
		}
	}
	step(n.cfg.Name, "mark")
	br, err := hn.LinkByName(bridgeName(n.cfg.VNI))
	if err != nil {
		return opErr(h.cfg.NS, bridgeName(n.cfg.VNI), err)
	}
	if l, err := hn.LinkByIndex(ends.Host.Index); err != nil || l.Attrs().MasterIndex != br.Attrs().Index {
		if err := hn.LinkSetMasterByIndex(hl, br.Attrs().Index); err != nil {
			return opErr(h.cfg.NS, name, err)
		}
	}
	step(n.cfg.Name, "port")
	cn, err := ec.NS.Netlink()
	if err != nil {
		return fail(err)
	}
	peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ends.Peer.Index, Name: ec.IfName}}
	for _, p := range ep.Addrs {
		a := &netlink.Addr{IPNet: ipnet.From(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := cn.AddrAdd(peer, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return opErr(ec.NS, ec.IfName, err)
		}
	}
	// The subnets' routes come with the addresses; one someone deleted
	// does not come back with an address that stayed.
	missing, err := subnetRoutes(ec.NS, ends.Peer.Index, ep.Addrs)
	if err != nil {
		return fail(err)
	}
	for _, r := range missing {
		if err := cn.RouteAdd(&r); err != nil && !errors.Is(err, unix.EEXIST) {
			return opErr(ec.NS, ec.IfName, err)
		}
	}
	step(n.cfg.Name, "address")
	if !n.cfg.Internal {
		gw, err := h.gateway(ctx)
		if err != nil {
			return fail(err)
		}
		gid := gatewayID(n.cfg.Name, ec.ID)
		gep, err := gw.Attach(ctx, bridge.EndpointConfig{ID: gid, NS: ec.NS, DefaultRoute: true})
		if err != nil {
			return fail(fmt.Errorf("overlay: attach %s to the gateway bridge: %w", ec.ID, err))
		}
		ep.Egress = &Egress{Endpoint: gep, Subnets: gw.Config().Subnets}
	}
	return ep, nil
}

// adoptPair returns the endpoint's pair that cfg names when it is there
// into cfg.Peer.NS, whatever its MTU, MAC and state, set up.
func (n *Network) adoptPair(cfg veth.Config) (veth.Ends, bool) {
	hn, err := n.h.cfg.NS.Netlink()
	if err != nil {
		return veth.Ends{}, false
	}
	cn, err := cfg.Peer.NS.Netlink()
	if err != nil {
		return veth.Ends{}, false
	}
	a, err := hn.LinkByName(cfg.Name)
	if err != nil || a.Type() != "veth" || a.Attrs().Group != cfg.Group && a.Attrs().Group != 0 {
		return veth.Ends{}, false
	}
	b, err := cn.LinkByName(cfg.Peer.Name)
	if err != nil || b.Type() != "veth" || b.Attrs().ParentIndex != a.Attrs().Index || a.Attrs().ParentIndex != b.Attrs().Index {
		return veth.Ends{}, false
	}
	if a.Attrs().Group == 0 { // made by an earlier version: marked now
		if hn.LinkSetGroup(a, int(cfg.Group)) != nil {
			return veth.Ends{}, false
		}
	}
	for _, x := range []struct {
		h *netlink.Handle
		l netlink.Link
	}{{hn, a}, {cn, b}} {
		if x.l.Attrs().MTU != cfg.MTU && x.h.LinkSetMTU(x.l, cfg.MTU) != nil {
			return veth.Ends{}, false
		}
		if x.h.LinkSetUp(x.l) != nil {
			return veth.Ends{}, false
		}
	}
	return veth.Ends{
		Host: veth.Link{NS: n.h.cfg.NS, Index: a.Attrs().Index, Name: a.Attrs().Name, MAC: a.Attrs().HardwareAddr},
		Peer: veth.Link{NS: cfg.Peer.NS, Index: b.Attrs().Index, Name: b.Attrs().Name, MAC: b.Attrs().HardwareAddr},
	}, true
}

// subnetRoutes returns the routes to the subnets of addrs through
// interface idx of ns that are not there.
func subnetRoutes(ns *netns.NS, idx int, addrs []netip.Prefix) ([]netlink.Route, error) {
	routes, err := ns.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netlink.Route
	for _, a := range addrs {
		dst := a.Masked()
		if slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return r.LinkIndex == idx && r.Dst != nil && prefixOf(r.Dst) == dst
		}) {
			continue
		}
		r := netlink.Route{LinkIndex: idx, Dst: ipnet.From(dst), Scope: netlink.SCOPE_LINK}
		if a.Addr().Is4() {
			r.Src = a.Addr().AsSlice()
		} else {
			r.Family = netlink.FAMILY_V6
		}
		out = append(out, r)
	}
	return out, nil
}

// Detach removes a container from the overlay: its record goes (the other
// hosts drop it), then its veth pair and its addresses. An endpoint that
// is gone is no error, nor one that a killed Attach or Detach left half
// made: Detach removes what is there.
func (n *Network) Detach(ctx context.Context, id string) error {
	if err := n.check(false); err != nil {
		return err
	}
	if r := names.Check(id, 64); r != "" {
		return invalid("ID", id, r)
	}
	return n.h.detachKey(ctx, n.epKey(id))
}

// detachKey detaches the endpoint of key "ep/NET/HOST/ID" of this host:
// its record becomes a claim (pending: the other hosts drop it), then its
// veth pair and its egress go, its addresses are released, and the claim
// goes last. A process killed in between leaves the claim, by which GC or
// a Detach again finds what is left.
func (h *Host) detachKey(ctx context.Context, key string) error {
	parts := strings.SplitN(strings.TrimPrefix(key, epPrefix), "/", 3)
	if len(parts) != 3 {
		return nil
	}
	network, id := parts[0], parts[2]
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := lockEndpoint(h.cfg.NS, network, id)
	if err != nil {
		return err
	}
	defer unlock(false)
	return h.detach(ctx, key, network, id)
}

// detach is detachKey with the endpoint's lock held.
func (h *Host) detach(ctx context.Context, key, network, id string) error {
	h.mu.Lock()
	delete(h.mine, key)
	h.mu.Unlock()
	kv, err := h.cfg.Store.Get(ctx, h.key(key))
	if err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	var r epRecord
	if err == nil && json.Unmarshal(kv.Value, &r) == nil && !r.Pending {
		r.Pending = true
		if _, err := h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(key), Rev: kv.Rev, Value: encode(r)}); err != nil {
			return err
		}
		step(network, "unpublish")
	}
	if err := veth.Delete(ctx, h.cfg.NS, hostVeth(network, id)); err != nil {
		return err
	}
	step(network, "veth")
	if err := h.detachEgress(ctx, network, id); err != nil {
		return err
	}
	if err := h.cfg.Alloc.Release(ctx, poolName(network), id); err != nil {
		return err
	}
	step(network, "release")
	return h.del(ctx, key)
}

// detachEgress detaches the endpoint from the host's gateway bridge, if
// the host has one.
func (h *Host) detachEgress(ctx context.Context, network, id string) error {
	h.gwMu.Lock()
	gw := h.gw
	h.gwMu.Unlock()
	if gw == nil {
		nl, err := h.cfg.NS.Netlink()
		if err != nil {
			return err
		}
		if _, err := nl.LinkByName(gatewayBridge); err != nil {
			return nil // no gateway bridge: nothing attached to it
		}
		if gw, err = h.gateway(ctx); err != nil {
			return err
		}
	}
	return gw.Detach(ctx, gatewayID(network, id))
}

// prefixOf is a net.IPNet as a netip.Prefix.
func prefixOf(n *net.IPNet) netip.Prefix {
	ip, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}
