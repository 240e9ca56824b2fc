package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Check compares the network on this host with its settings and the
// store, like CNI's CHECK, and changes nothing: its records in the store
// (its definition, its VNI), its pool, its bridge and VXLAN device (the
// driver's, up, the VXLAN device a port of the bridge), the FDB and
// neighbour entries the control plane programmed for the other hosts'
// endpoints, and the ingress filter of its VNI with the peers those
// entries name. It returns nil, or a *DriftError (matching ErrDrift)
// naming every difference; Create with the same settings (or
// Host.Network) repairs them.
func (n *Network) Check(ctx context.Context) error {
	if err := n.check(true); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, cfg := n.h, n.cfg
	d := driftError(cfg.Name, "")
	miss := func(kind, what string) { d.Drifts = append(d.Drifts, Drift{Kind: kind, What: what}) }

	def, err := h.definition(ctx, cfg.Name)
	switch {
	case errors.Is(err, ErrNotFound):
		miss("record", netPrefix+cfg.Name)
	case err != nil:
		return err
	case string(encode(def)) != string(encode(cfg)):
		miss("record", netPrefix+cfg.Name+" as created")
	}
	vniKey := fmt.Sprintf("vni/%d", cfg.VNI)
	if kv, err := h.cfg.Store.Get(ctx, h.key(vniKey)); errors.Is(err, ipam.ErrNotFound) || err == nil && string(kv.Value) != cfg.Name {
		miss("record", vniKey)
	} else if err != nil {
		return err
	}
	if _, _, err := h.cfg.Alloc.Inspect(ctx, poolName(cfg.Name)); errors.Is(err, ipam.ErrNotFound) {
		miss("pool", poolName(cfg.Name))
	} else if err != nil {
		return err
	}

	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return err
	}
	brName, vxName := bridgeName(cfg.VNI), vxlanName(cfg.VNI)
	br, err := nl.LinkByName(brName)
	if err != nil || br.Type() != "bridge" {
		miss("bridge", brName)
		br = nil
	} else if br.Attrs().Flags&net.FlagUp == 0 {
		miss("up", brName)
	}
	var have map[entry]bool
	vx, err := nl.LinkByName(vxName)
	if v, ok := vx.(*netlink.Vxlan); err != nil || !ok || v.VxlanId != int(cfg.VNI) {
		miss("vxlan", vxName)
	} else {
		if br == nil || vx.Attrs().MasterIndex != br.Attrs().Index {
			miss("port", vxName+" of "+brName)
		}
		if vx.Attrs().Flags&net.FlagUp == 0 {
			miss("up", vxName)
		}
		if have, err = kernelEntries(nl, vx, cfg.VNI); err != nil {
			return err
		}
	}
	h.mu.Lock()
	var want []entry
	for e := range h.prog {
		if e.vni == cfg.VNI {
			want = append(want, e)
		}
	}
	port := h.ports[cfg.VNI]
	h.mu.Unlock()
	if port == 0 {
		port = uint16(cfg.Port)
	}
	if have != nil {
		for _, e := range want {
			if !have[e] {
				miss(e.kindName(), e.String())
			}
		}
	}
	filters, err := nft.VXLANFilters(ctx, h.cfg.NS)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(filters, func(f nft.VXLAN) bool { return f.VNI == cfg.VNI })
	if i < 0 || filters[i].Port != port {
		miss("filter", fmt.Sprintf("VNI %d port %d", cfg.VNI, port))
	} else {
		for _, p := range h.filter(cfg.VNI, port, setOf(want)).Peers {
			if !slices.Contains(filters[i].Peers, p) {
				miss("filter", fmt.Sprintf("peer %s of VNI %d", p, cfg.VNI))
			}
		}
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}

func setOf(es []entry) map[entry]bool {
	m := make(map[entry]bool, len(es))
	for _, e := range es {
		m[e] = true
	}
	return m
}

// kindName is the Drift kind of a missing entry.
func (e entry) kindName() string {
	if e.kind == neighEntry {
		return "neighbour"
	}
	return "fdb"
}

func (e entry) String() string {
	switch e.kind {
	case fdbEntry:
		return fmt.Sprintf("%s dst %s on %s", e.mac, e.ip, vxlanName(e.vni))
	case floodEntry:
		return fmt.Sprintf("00:00:00:00:00:00 dst %s on %s", e.ip, vxlanName(e.vni))
	}
	return fmt.Sprintf("%s lladdr %s on %s", e.ip, e.mac, vxlanName(e.vni))
}

// CheckEndpoint compares endpoint id of this host with its settings and
// the store, and changes nothing: its record (published, this host's), its
// allocation, its host veth (the driver's, marked, a port of the
// network's bridge, up), the container's interface in ctr (its peer, up,
// with the endpoint's addresses and the routes to their subnets), and,
// unless the network is internal, its interface on the host's gateway
// bridge (see bridge's CheckEndpoint; those drifts are named "egress").
// It returns nil, or a *DriftError (matching ErrDrift) naming every
// difference; Attach with the same settings repairs them.
func (n *Network) CheckEndpoint(ctx context.Context, id string, ctr *netns.NS) error {
	if err := n.check(true); err != nil {
		return err
	}
	if ctr == nil {
		return invalid("ctr", nil, "no container namespace")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, cfg := n.h, n.cfg
	d := driftError(cfg.Name, id)
	miss := func(kind, what string) { d.Drifts = append(d.Drifts, Drift{Kind: kind, What: what}) }

	key := n.epKey(id)
	var rec epRecord
	kv, err := h.cfg.Store.Get(ctx, h.key(key))
	switch {
	case errors.Is(err, ipam.ErrNotFound):
		miss("record", key)
	case err != nil:
		return err
	case json.Unmarshal(kv.Value, &rec) != nil || rec.Host != h.cfg.Name || rec.Pending:
		miss("record", key+" (published)")
	}
	_, allocs, err := h.cfg.Alloc.Inspect(ctx, poolName(cfg.Name))
	if err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	var want []netip.Prefix
	if i := slices.IndexFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == id }); i >= 0 {
		for _, l := range allocs[i].Leases() {
			want = append(want, l.Addr)
		}
	} else {
		miss("allocation", id+" in "+poolName(cfg.Name))
	}

	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return err
	}
	name := hostVeth(cfg.Name, id)
	l, err := nl.LinkByName(name)
	if err != nil || l.Type() != "veth" || l.Attrs().Group != epGroup(cfg.Name, id) {
		miss("interface", name)
		return d
	}
	m, marked := decodeEPMark(l.Attrs().Alias)
	if !marked || m.Net != cfg.Name || m.ID != id {
		miss("mark", name)
		m.IfName = "eth0"
	}
	if br, err := nl.LinkByName(bridgeName(cfg.VNI)); err != nil || l.Attrs().MasterIndex != br.Attrs().Index {
		miss("port", name+" of "+bridgeName(cfg.VNI))
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		miss("up", name)
	}
	cn, err := ctr.Netlink()
	if err != nil {
		return err
	}
	peer, err := cn.LinkByName(m.IfName)
	if err != nil || peer.Attrs().ParentIndex != l.Attrs().Index {
		miss("interface", m.IfName+" in "+ctr.String())
	} else {
		missing, err := ctrlink.Check(ctr, peer, want, cfg.Subnets, false)
		if err != nil {
			return err
		}
		for _, x := range missing {
			miss(x.Kind, x.What)
		}
		routes, err := subnetRoutes(ctr, peer.Attrs().Index, want)
		if err != nil {
			return err
		}
		for _, r := range routes {
			miss("route", prefixOf(r.Dst).String()+" dev "+m.IfName)
		}
	}
	if !cfg.Internal {
		egress, err := n.checkEgress(ctx, id, ctr)
		if err != nil {
			return err
		}
		for _, x := range egress {
			miss(x.Kind, "egress "+x.What)
		}
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}

// checkEgress returns the drifts of the endpoint's interface on the
// host's gateway bridge; a gateway bridge that is gone is a drift of its
// own.
func (n *Network) checkEgress(ctx context.Context, id string, ctr *netns.NS) ([]Drift, error) {
	h := n.h
	nl, err := h.cfg.NS.Netlink()
	if err != nil {
		return nil, err
	}
	if _, err := nl.LinkByName(gatewayBridge); err != nil {
		return []Drift{{Kind: "bridge", What: gatewayBridge}}, nil
	}
	gw, err := h.gateway(ctx)
	if err != nil {
		return nil, err
	}
	err = gw.CheckEndpoint(ctx, gatewayID(n.cfg.Name, id), ctr)
	var bd *bridge.DriftError
	switch {
	case err == nil:
		return nil, nil
	case errors.Is(err, bridge.ErrNotFound):
		return []Drift{{Kind: "interface", What: "of " + gatewayID(n.cfg.Name, id)}}, nil
	case errors.As(err, &bd):
		return bd.Drifts, nil
	}
	return nil, err
}
