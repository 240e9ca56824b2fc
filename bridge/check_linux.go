package bridge

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Check compares the network with what its settings say, like CNI's CHECK,
// and changes nothing: its bridge (marked, up, with the gateway
// addresses), its pool, and its isolation rules. It returns nil, or a
// *DriftError (matching ErrDrift) naming every difference; New with the
// same settings repairs them.
func (n *Network) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := driftError(n.cfg.Name, "")
	miss := func(kind, what string) { d.Drifts = append(d.Drifts, Drift{Kind: kind, What: what}) }
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	br, err := h.LinkByName(n.cfg.Bridge)
	if err != nil || !n.owns(br) {
		miss("bridge", n.cfg.Bridge)
	} else {
		if br.Attrs().Flags&net.FlagUp == 0 {
			miss("up", n.cfg.Bridge)
		}
		have, err := n.host.Addrs(br, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, s := range n.cfg.Subnets {
			want := netip.PrefixFrom(s.Gateway, s.Subnet.Bits())
			if !slices.ContainsFunc(have, func(a netlink.Addr) bool { return ctrlink.Prefix(a) == want }) {
				miss("address", want.String()+" on "+n.cfg.Bridge)
			}
		}
	}
	if _, _, err := n.alloc.Inspect(ctx, n.pool); errors.Is(err, ipam.ErrNotFound) {
		miss("pool", n.pool)
	} else if err != nil {
		return err
	}
	if ok, err := nft.HasNetwork(ctx, n.host, nftNetwork(n.cfg)); err != nil {
		return err
	} else if !ok {
		miss("rule", "isolation of "+n.cfg.Bridge)
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}

// CheckEndpoint compares endpoint id with what its settings say and changes
// nothing: its host veth (marked, a port of the bridge, up), the
// container's interface in ctr (up, with the addresses the endpoint holds
// in the pool, and its default route), and its allocation. It returns nil,
// an error matching ErrNotFound if the endpoint is not attached, or a
// *DriftError (matching ErrDrift) naming every difference; Attach with the
// same settings repairs them.
func (n *Network) CheckEndpoint(ctx context.Context, id string, ctr *netns.NS) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := driftError(n.cfg.Name, id)
	miss := func(kind, what string) { d.Drifts = append(d.Drifts, Drift{Kind: kind, What: what}) }
	name, l, err := n.findHostVeth(id, false)
	if err != nil {
		return err
	}
	if l == nil {
		return driftError(n.cfg.Name, id, Drift{Kind: "interface", What: name})
	}
	m, _ := decodeEPMark(l.Attrs().Alias)
	if l.Attrs().MasterIndex != n.index || n.index == 0 {
		miss("port", name+" of "+n.cfg.Bridge)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		miss("up", name)
	}
	_, allocs, err := n.alloc.Inspect(ctx, n.pool)
	if err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	var want []netip.Prefix
	if i := slices.IndexFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner(n.cfg.Name, id) }); i >= 0 {
		want, _ = leases(allocs[i])
	} else {
		miss("allocation", endpointOwner(n.cfg.Name, id))
	}
	ch, err := ctr.Netlink()
	if err != nil {
		return err
	}
	peer, err := ch.LinkByName(m.IfName)
	if err != nil || peer.Attrs().ParentIndex != l.Attrs().Index {
		miss("interface", m.IfName+" in "+ctr.String())
	} else {
		missing, err := ctrlink.Check(ctr, peer, want, n.cfg.Subnets, m.Gateway)
		if err != nil {
			return err
		}
		for _, x := range missing {
			miss(x.Kind, x.What)
		}
	}
	if len(d.Drifts) > 0 {
		return d
	}
	return nil
}
