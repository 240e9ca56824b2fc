package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// GC is the one recovery call per host (like CNI GC): given the endpoints
// that are live on this host, it removes every object of the overlay
// driver on the host whose owner is gone, and what a process killed half
// way left:
//
//   - this host's endpoint records (published, or the claim of a killed
//     Attach or Detach) of endpoints that are not live, with their host
//     veths, their egress and their allocations;
//   - host veths of the driver (its device group) that are no live
//     endpoint's: of endpoints that are not live, made half by a killed
//     Attach, or of networks no longer defined; their allocations go too,
//     unless another host's record claims the endpoint;
//   - bridges and VXLAN devices of the driver whose VNI no defined network
//     has, and the ingress filters of VNIs that have no device left;
//   - interfaces on the host's gateway bridge of endpoints that are not
//     live.
//
// It never touches another host's records, nor the allocations that
// another host's record claims: the store is shared, and GC knows only
// this host's live set. An allocation no record claims at all (say, of a
// host that died and was reaped by the others) is left alone, as it may
// still be in use where GC cannot see. Networks are the cluster's: a
// network's definition and pool go with Host.Delete, which also completes
// a Create or Delete that was killed half way.
//
// GC holds the host's lock meanwhile, so no Attach or Detach of this host
// runs half way while it looks. The recipe for a restarted orchestrator is
// in the package doc.
func (h *Host) GC(ctx context.Context, live Live) (Collected, error) {
	var out Collected
	if err := h.check(true); err != nil {
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	unlock, err := lockHost(h.cfg.NS)
	if err != nil {
		return out, err
	}
	defer unlock(false)
	// No call of this host holds or waits for an endpoint's lock now.
	defer keylock.RemoveUnder(locks.Prefix(h.cfg.NS))
	isLive := func(network, id string) bool { return slices.Contains(live.Endpoints, LiveEndpoint{network, id}) }

	kvs, _, err := h.cfg.Store.List(ctx, h.cfg.Prefix)
	if err != nil {
		return out, err
	}
	defs := map[string]Config{}
	vnis := map[uint32]bool{}
	claimed := map[string]string{} // "NET/ID" -> the host whose record claims it
	var mine []string              // this host's endpoint keys
	for _, kv := range kvs {
		k := kv.Key[len(h.cfg.Prefix):]
		if name, ok := strings.CutPrefix(k, netPrefix); ok {
			var cfg Config
			if json.Unmarshal(kv.Value, &cfg) == nil {
				defs[name], vnis[cfg.VNI] = cfg, true
			}
			continue
		}
		rest, ok := strings.CutPrefix(k, epPrefix)
		parts := strings.SplitN(rest, "/", 3)
		if !ok || len(parts) != 3 {
			continue
		}
		claimed[parts[0]+"/"+parts[2]] = parts[1]
		if parts[1] == h.cfg.Name {
			mine = append(mine, k)
		}
	}

	// This host's records of endpoints that are not live: detached.
	for _, k := range mine {
		parts := strings.SplitN(strings.TrimPrefix(k, epPrefix), "/", 3)
		if isLive(parts[0], parts[2]) {
			continue
		}
		if err := h.detach(ctx, k, parts[0], parts[2]); err != nil {
			return out, err
		}
		out.Endpoints = append(out.Endpoints, parts[0]+"/"+parts[2])
		delete(claimed, parts[0]+"/"+parts[2])
	}

	// Links.
	links, err := h.cfg.NS.Links()
	if err != nil {
		return out, err
	}
	liveVeth := map[string]bool{}
	for _, e := range live.Endpoints {
		if _, ok := defs[e.Network]; ok {
			liveVeth[hostVeth(e.Network, e.ID)] = true
		}
	}
	del := func(name string, idx int) error {
		if err := linkdel.Delete(h.cfg.NS, idx); err != nil && !nlerr.NotExist(err) {
			return &netns.OpError{Op: "overlay.gc", NS: h.cfg.NS.String(), Name: name, Err: err}
		}
		out.Links = append(out.Links, name)
		return nil
	}
	// Devices of networks that are not defined, VXLAN devices first.
	gone := map[uint32]bool{}
	for _, kind := range []string{"vxlan", "bridge"} {
		for _, l := range links {
			a := l.Attrs()
			vni, ok := vniOf(a.Name)
			if !ok || l.Type() != kind || !isGroup(a.Group) || vnis[vni] {
				continue
			}
			gone[vni] = true
			if err := del(a.Name, a.Index); err != nil {
				return out, err
			}
		}
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !isGroup(a.Group) || liveVeth[a.Name] {
			continue
		}
		if m, ok := decodeEPMark(a.Alias); ok {
			if owner, ok := claimed[m.Net+"/"+m.ID]; !ok || owner == h.cfg.Name {
				if err := h.cfg.Alloc.Release(ctx, poolName(m.Net), m.ID); err != nil && !errors.Is(err, ipam.ErrNotFound) {
					return out, err
				}
			}
		}
		if err := del(a.Name, a.Index); err != nil {
			return out, err
		}
	}
	h.mu.Lock()
	for name, vni := range h.local {
		if gone[vni] {
			h.removeLocal(name, vni)
		}
	}
	h.mu.Unlock()

	// Egress of endpoints that are not live.
	if err := h.gcEgress(ctx, live); err != nil {
		return out, err
	}

	// Ingress filters of VNIs without a device.
	filters, err := nft.VXLANFilters(ctx, h.cfg.NS)
	if err != nil {
		return out, err
	}
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return out, err
	}
	var stale []uint32
	for _, f := range filters {
		if _, err := nl.LinkByName(vxlanName(f.VNI)); err != nil && (gone[f.VNI] || !vnis[f.VNI]) {
			stale = append(stale, f.VNI)
		}
	}
	if len(stale) > 0 {
		if err := nft.SetVXLAN(ctx, h.cfg.NS, stale, nil); err != nil {
			return out, err
		}
		out.Filters = stale
	}
	return out, nil
}

// gcEgress detaches from the host's gateway bridge, if there is one, the
// endpoints that are not live.
func (h *Host) gcEgress(ctx context.Context, live Live) error {
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return err
	}
	if _, err := nl.LinkByName(gatewayBridge); err != nil {
		return nil
	}
	gw, err := h.gateway(ctx)
	if err != nil {
		return err
	}
	info, err := gw.Inspect(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, e := range live.Endpoints {
		keep[gatewayID(e.Network, e.ID)] = true
	}
	for _, e := range info.Endpoints {
		if !keep[e.ID] {
			if err := gw.Detach(ctx, e.ID); err != nil {
				return err
			}
		}
	}
	return nil
}
