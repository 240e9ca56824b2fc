package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// entry is one thing the control plane puts into the kernel for a remote
// endpoint: an FDB entry (the endpoint's MAC to its host's VTEP), a
// neighbour entry (its address to its MAC, for the VXLAN device's proxy
// ARP), or a flood entry (broadcasts go to every host that has endpoints
// on the network).
type entry struct {
	kind int
	vni  uint32
	mac  string     // fdb, neigh
	ip   netip.Addr // fdb and flood: the VTEP; neigh: the endpoint's address
}

// beat is the last change of a host's record, by the observer's clock.
type beat struct {
	val string
	at  time.Time
}

const (
	fdbEntry = iota
	neighEntry
	floodEntry
)

// run keeps the view in step with the store: List, then Watch from the
// revision List returned; when a watch ends (the store was compacted past
// its revision, or went away), List again, so that a watch never retries
// a revision that is gone.
func (h *Host) run(ctx context.Context) {
	defer close(h.done)
	programmed := make(chan struct{})
	go func() {
		defer close(programmed)
		for {
			select {
			case <-ctx.Done():
				return
			case <-h.wakeup:
				h.program()
			}
		}
	}()
	defer func() { <-programmed }()
	// The heartbeat: the host's record changes every third of the TTL, and
	// the kernel is checked against the others' heartbeats as often.
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		t := time.NewTicker(h.cfg.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				h.mu.Lock()
				h.recheck = true
				h.mu.Unlock()
				rec := encode(hostRecord{VTEP: h.cfg.VTEP, Seen: time.Now()})
				if err := h.put(ctx, hostPrefix+h.cfg.Name, rec); err != nil && ctx.Err() == nil {
					h.cfg.Logger.Error("overlay: heartbeat", "err", err)
				}
				h.kick()
			}
		}
	}()
	defer func() { <-beating }()
	first := true
	for ctx.Err() == nil {
		kvs, rev, err := h.cfg.Store.List(ctx, h.cfg.Prefix)
		if err != nil {
			h.cfg.Logger.Error("overlay: list", "err", err)
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		view := make(map[string][]byte, len(kvs))
		for _, kv := range kvs {
			view[kv.Key[len(h.cfg.Prefix):]] = kv.Value
		}
		h.mu.Lock()
		h.view = view
		h.mu.Unlock()
		h.program()
		if first {
			close(h.ready)
			first = false
		}
		h.watch(ctx, rev)
	}
}

// watch applies the store's changes after rev to the view until the watch
// ends. The host's own heartbeat changes its record every third of the
// TTL, so a watch that brings nothing for a whole TTL is stuck (an etcd
// client resuming at a compacted revision can be): watch gives it up, and
// run lists again.
func (h *Host) watch(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := h.cfg.Store.Watch(wctx, h.cfg.Prefix, rev)
	defer func() {
		cancel()
		for range events { // let the store's goroutine end
		}
	}()
	silence := time.NewTimer(h.cfg.LeaseTTL)
	defer silence.Stop()
	for {
		select {
		case <-silence.C:
			h.cfg.Logger.Info("overlay: watch silent for a lease; listing again", "rev", rev)
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Err != nil {
				if errors.Is(ev.Err, ipam.ErrCompacted) {
					h.cfg.Logger.Info("overlay: watch compacted; listing again", "rev", rev)
				} else {
					h.cfg.Logger.Error("overlay: watch", "err", ev.Err)
				}
				return
			}
			silence.Reset(h.cfg.LeaseTTL)
			h.mu.Lock()
			if ev.Delete {
				delete(h.view, ev.Key[len(h.cfg.Prefix):])
			} else {
				h.view[ev.Key[len(h.cfg.Prefix):]] = ev.Value
			}
			h.mu.Unlock()
			h.kick()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// kick asks for the kernel to be brought in step with the view.
func (h *Host) kick() {
	select {
	case h.wakeup <- struct{}{}:
	default:
	}
}

// program makes the kernel hold what the view says: the devices of every
// defined network, and the entries of every remote endpoint.
func (h *Host) program() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	defs := map[string]Config{}
	for k, v := range h.view {
		if name, ok := strings.CutPrefix(k, netPrefix); ok {
			var cfg Config
			if json.Unmarshal(v, &cfg) == nil {
				defs[name] = cfg
			}
		}
	}
	// A network leaves when the view loses it; one that Network made from
	// the store before the view had it stays.
	for name, vni := range h.local {
		if cfg, ok := defs[name]; ok && cfg.VNI != vni || !ok && h.defined[name] {
			h.removeLocal(name, vni)
		}
	}
	clear(h.defined)
	for name := range defs {
		h.defined[name] = true
	}
	for _, cfg := range defs {
		if _, ok := h.local[cfg.Name]; ok {
			continue // checked by Host.Network (Create, Attach): not at every event
		}
		if _, err := h.ensureLocal(cfg); err != nil {
			h.cfg.Logger.Error("overlay: network devices", "network", cfg.Name, "err", err)
		}
	}

	alive, reap, lost := h.liveness()
	if len(reap)+len(lost) > 0 {
		go h.repair(reap, lost)
	}

	want := map[entry]bool{}
	wantNames := map[string]map[string]epRecord{}
	for k, v := range h.view {
		rest, ok := strings.CutPrefix(k, epPrefix)
		if !ok {
			continue
		}
		network, _, _ := strings.Cut(rest, "/")
		vni, ok := h.local[network]
		var r epRecord
		if !ok || json.Unmarshal(v, &r) != nil || !alive[r.Host] || r.Pending {
			continue
		}
		if parts := strings.SplitN(rest, "/", 3); len(parts) == 3 {
			if wantNames[network] == nil {
				wantNames[network] = map[string]epRecord{}
			}
			wantNames[network][parts[2]] = r
		}
		if r.Host == h.cfg.Name {
			continue
		}
		want[entry{kind: fdbEntry, vni: vni, mac: r.MAC, ip: r.VTEP}] = true
		want[entry{kind: floodEntry, vni: vni, ip: r.VTEP}] = true
		for _, a := range r.Addrs {
			want[entry{kind: neighEntry, vni: vni, mac: r.MAC, ip: a}] = true
		}
	}
	if h.cfg.DNS != nil {
		h.programNames(defs, wantNames)
	}
	// The ingress filters, before the entries: a host that left loses
	// access before its entries go, one that came is heard before it is
	// sent to.
	// They are read back from the kernel only when they change and at
	// each heartbeat, which restores them after someone flushed the table.
	var filters []nft.VXLAN
	for _, vni := range h.local {
		filters = append(filters, h.filter(vni, h.ports[vni], want))
	}
	slices.SortFunc(filters, func(a, b nft.VXLAN) int { return int(a.VNI) - int(b.VNI) })
	for i := range filters {
		slices.SortFunc(filters[i].Peers, netip.Addr.Compare)
	}
	if sum := fmt.Sprint(filters); len(filters) > 0 && (h.recheck || sum != h.filtered) {
		if err := nft.SetVXLAN(context.Background(), h.cfg.NS, nil, filters); err != nil {
			h.cfg.Logger.Error("overlay: ingress filter", "err", err)
			sum = ""
		}
		h.filtered, h.recheck = sum, false
	}
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		h.cfg.Logger.Error("overlay: netlink", "err", err)
		return
	}
	for e := range h.prog {
		if !want[e] {
			if err := h.entry(nl, e, false); err != nil && !nlerr.NotExist(err) {
				h.cfg.Logger.Error("overlay: remove entry", "entry", e, "err", err)
			}
			delete(h.prog, e)
		}
	}
	for e := range want {
		if !h.prog[e] {
			if err := h.entry(nl, e, true); err != nil {
				h.cfg.Logger.Error("overlay: add entry", "entry", e, "err", err)
				continue
			}
			h.prog[e] = true
			if e.kind == neighEntry {
				br, err := nl.LinkByName(bridgeName(e.vni))
				if err == nil {
					mac, _ := net.ParseMAC(e.mac)
					err = h.announce(br.Attrs().Index, e.ip, mac)
				}
				if err != nil {
					h.cfg.Logger.Error("overlay: announce", "entry", e, "err", err)
				}
			}
		}
	}
}

// entry adds or deletes e in the kernel.
func (h *Host) entry(nl *netlink.Handle, e entry, add bool) error {
	vx, err := nl.LinkByName(vxlanName(e.vni))
	if err != nil {
		return err
	}
	n := &netlink.Neigh{LinkIndex: vx.Attrs().Index, IP: e.ip.AsSlice(), State: netlink.NUD_PERMANENT}
	switch e.kind {
	case fdbEntry, floodEntry:
		n.Family, n.Flags = unix.AF_BRIDGE, netlink.NTF_SELF
		n.HardwareAddr = make(net.HardwareAddr, 6) // flood: all zeroes
		if e.kind == fdbEntry {
			n.HardwareAddr, _ = net.ParseMAC(e.mac)
		}
	case neighEntry:
		n.Family = unix.AF_INET
		if e.ip.Is6() {
			n.Family = unix.AF_INET6
		}
		n.HardwareAddr, _ = net.ParseMAC(e.mac)
	}
	switch {
	case !add:
		return nl.NeighDel(n)
	case e.kind == floodEntry:
		// Several hosts: one all-zero entry per VTEP, appended.
		err := nl.NeighAppend(n)
		if errors.Is(err, unix.EEXIST) {
			return nil
		}
		return err
	default:
		return nl.NeighSet(n)
	}
}

// liveness updates the heartbeats from the view and returns the hosts that
// are alive, the keys of the dead ones (their record and endpoints, to
// delete), and this host's endpoint records missing from the store (to
// publish again: another host took this one for dead). h.mu is held.
func (h *Host) liveness() (alive map[string]bool, reap []string, lost map[string][]byte) {
	now := time.Now()
	alive = map[string]bool{h.cfg.Name: true}
	var deadHosts []string
	for k, v := range h.view {
		name, ok := strings.CutPrefix(k, hostPrefix)
		if !ok || name == h.cfg.Name {
			continue
		}
		b, seen := h.beats[name]
		if !seen || b.val != string(v) {
			b = beat{val: string(v), at: now}
			h.beats[name] = b
		}
		if now.Sub(b.at) <= h.cfg.LeaseTTL {
			alive[name] = true
		} else {
			deadHosts = append(deadHosts, k)
		}
	}
	for name := range h.beats {
		if _, ok := h.view[hostPrefix+name]; !ok {
			delete(h.beats, name)
		}
	}
	// Endpoints first, then their host, as a goodbye does.
	for k := range h.view {
		if rest, ok := strings.CutPrefix(k, epPrefix); ok {
			parts := strings.SplitN(rest, "/", 3)
			if len(parts) == 3 && slices.Contains(deadHosts, hostPrefix+parts[1]) {
				reap = append(reap, k)
			}
		}
	}
	reap = append(reap, deadHosts...)
	for k, v := range h.mine {
		if _, ok := h.view[k]; !ok {
			if lost == nil {
				lost = map[string][]byte{}
			}
			lost[k] = v
		}
	}
	return alive, reap, lost
}

// repair deletes the records of dead hosts and publishes this host's lost
// endpoint records again.
func (h *Host) repair(reap []string, lost map[string][]byte) {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.LeaseTTL)
	defer cancel()
	for _, k := range reap {
		if err := h.del(ctx, k); err != nil {
			h.cfg.Logger.Error("overlay: remove a dead host's record", "key", k, "err", err)
		}
	}
	for k, v := range lost {
		if _, err := h.cfg.Store.CAS(ctx, ipam.Op{Key: h.key(k), Value: v}); err != nil && !errors.Is(err, ipam.ErrConflict) {
			h.cfg.Logger.Error("overlay: publish an endpoint again", "key", k, "err", err)
			continue
		}
		h.mu.Lock()
		_, still := h.mine[k]
		h.mu.Unlock()
		if !still { // detached meanwhile
			h.del(ctx, k)
		}
	}
}

// programNames makes the DNS server hold the names of every local
// network's endpoints, on every host. h.mu is held.
func (h *Host) programNames(defs map[string]Config, want map[string]map[string]epRecord) {
	dns := h.cfg.DNS
	for network, names := range h.names {
		if _, ok := h.local[network]; !ok {
			if err := dns.RemoveNetwork(network); err != nil {
				h.cfg.Logger.Error("overlay: dns", "network", network, "err", err)
			}
			delete(h.names, network)
			continue
		}
		for name := range names {
			if _, ok := want[network][name]; !ok {
				dns.Unregister(network, name)
				delete(names, name)
			}
		}
	}
	for network := range h.local {
		cfg := defs[network]
		if h.names[network] == nil {
			var subnets []netip.Prefix
			for _, s := range cfg.Subnets {
				subnets = append(subnets, s.Subnet)
			}
			if err := dns.AddNetwork(network, subnets, cfg.Internal); err != nil {
				h.cfg.Logger.Error("overlay: dns", "network", network, "err", err)
				continue
			}
			h.names[network] = map[string]string{}
		}
		for name, r := range want[network] {
			key := fmt.Sprint(r.Addrs, r.Aliases)
			if h.names[network][name] == key {
				continue
			}
			if err := dns.Register(network, dnsd.Endpoint{Name: name, Aliases: r.Aliases, Addrs: r.Addrs}); err != nil {
				h.cfg.Logger.Error("overlay: dns", "network", network, "name", name, "err", err)
				continue
			}
			h.names[network][name] = key
		}
	}
}
