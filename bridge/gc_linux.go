package bridge

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/netlock"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

// locks are the bridge networks' and endpoints' (see netlock).
var locks = netlock.Kind("bridge")

// GC is the one recovery call per host (like CNI GC): given what is live,
// it removes every object of the bridge driver in host whose owner is
// gone, and everything that a process killed half way left: networks that
// are not live (Delete with force), bridges and host veths that a New or
// Attach left half made (nsnet's device group, no mark), host veths of
// endpoints that are not live, pools of alloc ("bridge." + name) that have
// no network and are not live, and the allocations of endpoints that are
// not live, and the entries in nsnet's nftables tables of bridges and
// guarded ports whose links are gone. It holds the host's lock meanwhile, so no New, Attach, Detach
// or Delete of this host runs half way while it looks.
//
// The recipe for a restarted orchestrator is in the package doc.
func GC(ctx context.Context, host *netns.NS, alloc *ipam.Allocator, live Live) (_ Collected, err error) {
	defer func() { err = sentinel(err) }()
	var out Collected
	if host == nil || alloc == nil {
		return out, &netns.ValidationError{Pkg: "bridge", Field: "host, alloc", Value: "<nil>", Reason: "a host namespace and an allocator are required"}
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
		return slices.Contains(live.Endpoints, LiveEndpoint{network, id})
	}

	nets, err := list(ctx, host, alloc)
	if err != nil {
		return out, err
	}
	// Networks that are not live go whole.
	var keep []listed
	for _, l := range nets {
		if liveNet(l.Name) {
			keep = append(keep, l)
			continue
		}
		n := open(host, alloc, l.Info)
		if err := n.delete(ctx, true); err != nil {
			return out, err
		}
		out.Networks = append(out.Networks, l.Name)
	}
	// Links: half-made bridges and veths, and veths of endpoints that
	// are not live.
	links, err := host.Links()
	if err != nil {
		return out, err
	}
	isNet := func(name string) bool {
		return slices.ContainsFunc(keep, func(l listed) bool { return l.Name == name })
	}
	for _, l := range links {
		a := l.Attrs()
		var gone bool
		switch {
		case l.Type() == "bridge":
			_, marked := decodeNetMark(a.Alias)
			gone = !marked && ctrlink.IsGroup(a.Group)
		case l.Type() == "veth":
			m, marked := decodeEPMark(a.Alias)
			if marked {
				gone = !isNet(m.Net) || !liveEP(m.Net, m.ID)
				if !gone {
					continue
				}
				if err := alloc.Release(ctx, poolName(m.Net), endpointOwner(m.Net, m.ID)); err != nil && !errors.Is(err, ipam.ErrNotFound) {
					return out, err
				}
			} else {
				gone = ctrlink.IsGroup(a.Group)
			}
		}
		if !gone {
			continue
		}
		if err := linkdel.Delete(host, a.Index); err != nil && !nlerr.NotExist(err) {
			return out, &netns.OpError{Op: "bridge.gc", NS: host.String(), Name: a.Name, Err: err}
		}
		out.Links = append(out.Links, a.Name)
	}
	// nftables: the isolation entries of bridges that are gone (a
	// process died between deleting a bridge and its entries, or the
	// bridge was deleted behind nsnet's back), and the guards of ports
	// whose links are gone.
	if err := nft.PruneGone(ctx, host); err != nil {
		return out, err
	}
	// Pools: of no network and not live, and the allocations of
	// endpoints that are not live.
	pools, err := alloc.Pools(ctx)
	if err != nil {
		return out, err
	}
	for _, p := range pools {
		name, ok := strings.CutPrefix(p.Name, "bridge.")
		if !ok {
			continue
		}
		if !isNet(name) && (live.Networks == nil || !liveNet(name)) {
			if _, err := alloc.GC(ctx, p.Name, func(string) bool { return false }); err != nil {
				return out, err
			}
			if err := alloc.DeletePool(ctx, p.Name); err != nil && !errors.Is(err, ipam.ErrNotFound) {
				return out, err
			}
			out.Pools = append(out.Pools, p.Name)
			continue
		}
		released, err := alloc.GC(ctx, p.Name, func(owner string) bool {
			id, ok := strings.CutPrefix(owner, name+"/")
			return ok && liveEP(name, id)
		})
		if err != nil {
			return out, err
		}
		out.Addresses = append(out.Addresses, released...)
	}
	return out, nil
}
