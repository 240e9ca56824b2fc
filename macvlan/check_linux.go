package macvlan

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Check compares the network with what its settings say, like CNI's CHECK,
// and changes nothing: its anchor (marked; a passthru network's may be
// held by its container) and its pool. It returns nil or a *DriftError
// (matching ErrDrift) naming every difference; New with the same settings
// repairs them.
func (n *Network) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := driftError(n.cfg.Name, "")
	_, allocs, err := n.alloc.Inspect(ctx, n.pool)
	if errors.Is(err, ipam.ErrNotFound) {
		d.Drifts = append(d.Drifts, Drift{Kind: "pool", What: n.pool})
	} else if err != nil {
		return err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	l, err := h.LinkByName(n.anchor)
	held := n.cfg.Mode == ModePassthru && len(endpoints(n.cfg.Name, allocs)) > 0
	if !held {
		if m, ok := decodeNetMark(linkAlias(l, err)); err != nil || !ok || m.Name != n.cfg.Name {
			d.Drifts = append(d.Drifts, Drift{Kind: "anchor", What: n.anchor})
		}
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}

// CheckEndpoint compares endpoint id with what its settings say and changes
// nothing: its interface in ctr (marked, up, with the addresses the
// endpoint holds in the pool, and its default route), its allocation, and
// the anchor's record of its addresses (see the package doc).
// It returns nil or a *DriftError (matching ErrDrift) naming every
// difference; Attach with the same settings repairs them.
func (n *Network) CheckEndpoint(ctx context.Context, id string, ctr *netns.NS) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := driftError(n.cfg.Name, id)
	_, allocs, err := n.alloc.Inspect(ctx, n.pool)
	if err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	var want []netip.Prefix
	if i := slices.IndexFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner(n.cfg.Name, id) }); i >= 0 {
		want, _ = leases(allocs[i])
	} else {
		d.Drifts = append(d.Drifts, Drift{Kind: "allocation", What: endpointOwner(n.cfg.Name, id)})
	}
	if n.recorded() && want != nil {
		// The anchor's record of what the endpoint holds.
		if anchor, err := n.anchorLink(); err == nil {
			claims := claimsOf(anchor)
			for _, a := range want {
				if claims[a.Addr()] != id {
					d.Drifts = append(d.Drifts, Drift{Kind: "record", What: claimName(a.Addr(), id) + " on " + n.anchor})
				}
			}
		}
	}
	l, m, err := n.findEndpoint(ctr, id)
	if err != nil {
		return err
	}
	if l == nil || !marked(l) {
		d.Drifts = append(d.Drifts, Drift{Kind: "interface", What: "of " + id + " in " + ctr.String()})
	} else {
		missing, err := ctrlink.Check(ctr, l, want, n.cfg.Subnets, m.Gateway)
		if err != nil {
			return err
		}
		for _, x := range missing {
			d.Drifts = append(d.Drifts, Drift{Kind: x.Kind, What: x.What})
		}
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}

// linkAlias is the alias of a link looked up, or "".
func linkAlias(l netlink.Link, err error) string {
	if err != nil || l == nil {
		return ""
	}
	return l.Attrs().Alias
}
