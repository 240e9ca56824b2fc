package macvlan

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/netlock"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// locks are the macvlan networks' and endpoints' (see netlock).
var locks = netlock.Kind("macvlan")

// GC is the one recovery call per host (like CNI GC): given what is live,
// it removes every object of the macvlan driver whose owner is gone, and
// what a process killed half way left: networks that are not live (Delete
// with force), anchors that a New left half made (nsnet's device group, no
// mark), pools of alloc ("macvlan." + name) that have no network, no live
// endpoint and are not live, the allocations of endpoints that are not
// live, the records on live networks' anchors of addresses that endpoints
// which are not live held (see the package doc), and in the namespaces of
// live endpoints, the interfaces of this driver that no live endpoint owns
// or that an Attach left half made. It holds the host's lock meanwhile.
//
// The recipe for a restarted orchestrator (see the package doc): GC, then
// New of each live network, then Attach of each live endpoint, which
// repair what drifted.
func GC(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, live Live) (_ Collected, err error) {
	defer func() { err = sentinel(err) }()
	var out Collected
	if host == nil || alloc == nil {
		return out, bad("host, alloc", "<nil>", "a host namespace and an allocator are required")
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	unlock, err := locks.Host(host)
	if err != nil {
		return out, err
	}
	defer unlock(false)
	// No call of this host holds or waits for a network's or endpoint's
	// lock now: their files go (they are made again when needed).
	defer keylock.RemoveUnder(locks.Prefix(host))
	liveNet := func(name string) bool { return live.Networks == nil || slices.Contains(live.Networks, name) }
	liveEP := func(network, id string) bool {
		return slices.ContainsFunc(live.Endpoints, func(e LiveEndpoint) bool { return e.Network == network && e.ID == id })
	}

	nets, err := List(ctx, host, alloc)
	if err != nil {
		return out, err
	}
	var keep []string
	for _, i := range nets {
		if liveNet(i.Name) {
			keep = append(keep, i.Name)
			// The anchor's records of endpoints that are not live.
			err := open(host, alloc, i).unclaimIf(func(id string) bool { return id != shimSuffix && !liveEP(i.Name, id) })
			if err != nil {
				return out, err
			}
			continue
		}
		if err := open(host, alloc, i).delete(ctx, true); err != nil {
			return out, err
		}
		out.Networks = append(out.Networks, i.Name)
	}
	// Half-made anchors.
	h, err := host.Netlink()
	if err != nil {
		return out, err
	}
	links, err := host.Links()
	if err != nil {
		return out, err
	}
	for _, l := range links {
		a := l.Attrs()
		if _, marked := decodeNetMark(a.Alias); marked || l.Type() != "macvlan" || !ctrlink.IsGroup(a.Group) || !strings.HasPrefix(a.Name, anchorPrefix) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !nlerr.NotExist(err) {
			return out, &netns.OpError{Op: "macvlan.gc", NS: host.String(), Name: a.Name, Err: err}
		}
		out.Links = append(out.Links, a.Name)
	}
	// Interfaces in the live containers' namespaces.
	seen := map[netns.ID]bool{}
	spaces := slices.Clone(live.Namespaces)
	for _, e := range live.Endpoints {
		spaces = append(spaces, e.NS)
	}
	for _, ns := range spaces {
		if ns == nil || seen[ns.ID()] {
			continue
		}
		seen[ns.ID()] = true
		ls, err := ns.Links()
		if err != nil {
			if errors.Is(err, netns.ErrClosed) {
				continue
			}
			return out, err
		}
		ch, err := ns.Netlink()
		if err != nil {
			return out, err
		}
		for _, l := range ls {
			a := l.Attrs()
			if l.Type() != "macvlan" || !ctrlink.IsGroup(a.Group) {
				continue
			}
			if m, ok := decodeEPMark(a.Alias); ok && slices.Contains(keep, m.Net) && liveEP(m.Net, m.ID) {
				continue
			}
			if err := ch.LinkDel(l); err != nil && !nlerr.NotExist(err) {
				return out, &netns.OpError{Op: "macvlan.gc", NS: ns.String(), Name: a.Name, Err: err}
			}
			out.Links = append(out.Links, a.Name)
		}
	}
	// Pools and allocations.
	pools, err := alloc.Pools(ctx)
	if err != nil {
		return out, err
	}
	for _, p := range pools {
		name, ok := strings.CutPrefix(p.Name, poolPrefix)
		if !ok {
			continue
		}
		released, err := alloc.GC(ctx, p.Name, func(owner string) bool {
			id, ok := strings.CutPrefix(owner, name+"/")
			return ok && (id == shimSuffix && slices.Contains(keep, name) || liveEP(name, id))
		})
		if err != nil {
			return out, err
		}
		out.Addresses = append(out.Addresses, released...)
		_, left, err := alloc.Inspect(ctx, p.Name)
		if err != nil && !errors.Is(err, ipam.ErrNotFound) {
			return out, err
		}
		// A passthru network whose container holds the parent has no
		// anchor: its live endpoint keeps its pool.
		if !slices.Contains(keep, name) && len(left) == 0 && (live.Networks == nil || !liveNet(name)) {
			if err := alloc.DeletePool(ctx, p.Name); err != nil && !errors.Is(err, ipam.ErrNotFound) {
				return out, err
			}
			out.Pools = append(out.Pools, p.Name)
		}
	}
	return out, nil
}
