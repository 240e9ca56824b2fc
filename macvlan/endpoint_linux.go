package macvlan

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// afterLink, when a test sets it, is called by Attach once the container's
// interface exists, to inject a failure half way.
var afterLink func() error

func kernelMode(m Mode) netlink.MacvlanMode {
	switch m {
	case ModePrivate:
		return netlink.MACVLAN_MODE_PRIVATE
	case ModeVEPA:
		return netlink.MACVLAN_MODE_VEPA
	case ModePassthru:
		return netlink.MACVLAN_MODE_PASSTHRU
	}
	return netlink.MACVLAN_MODE_BRIDGE
}

// Attach gives a container an interface on the network, like `docker
// network connect` (or `docker run --network`): a macvlan interface on the
// parent, created directly in ep.NS under its final name (eth0, or the next
// free ethN) in one netlink request, so that no interface of the container
// ever appears in the host; with its MAC, an address from each subnet of
// the network (or the static ones asked for), the MTU, router
// advertisements ignored, a gratuitous ARP when it comes up, and the
// default route via the gateway if ep.DefaultRoute. Like `ip link add
// IFNAME link PARENT netns NS type macvlan mode MODE`.
//
// Attaching an endpoint that is attached with the same settings returns it;
// with other settings, or an IfName taken in the container, it fails with
// ErrExists. Bad input fails before anything is changed: a
// *netns.ValidationError for a bad EndpointConfig, a static address outside
// the network's subnets (or its gateway), an MTU above the parent's, a MAC
// for a passthru interface; ErrHostMode for the host's own namespace;
// ErrNotFound if the parent is gone; ErrInUse for a second container of a
// passthru network. A static address another endpoint holds fails with
// ipam.ErrAddrInUse. A failure half way removes the interface and releases
// the addresses.
func (n *Network) Attach(ctx context.Context, ep EndpointConfig) (_ Endpoint, err error) {
	defer func() { err = sentinel(err) }()
	if err := n.usable(); err != nil {
		return Endpoint{}, err
	}
	if err := ep.Validate(); err != nil {
		return Endpoint{}, err
	}
	if ep.NS.Equal(n.host) {
		return Endpoint{}, ErrHostMode
	}
	if n.cfg.Mode == ModePassthru && ep.MAC != nil {
		return Endpoint{}, bad("EndpointConfig.MAC", ep.MAC.String(), "a passthru interface has its parent's MAC")
	}
	if err := checkAddrs("EndpointConfig.Addrs", ep.Addrs, n.cfg.Subnets); err != nil {
		return Endpoint{}, err
	}
	if err := ctx.Err(); err != nil {
		return Endpoint{}, err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	parent, err := h.LinkByIndex(n.parent)
	if err != nil {
		return Endpoint{}, fmt.Errorf("macvlan: network %q: parent %s is gone: %w", n.cfg.Name, n.cfg.Parent, ErrNotFound)
	}
	mtu := ep.MTU
	if mtu == 0 {
		mtu = n.cfg.MTU
	}
	if pm := parent.Attrs().MTU; mtu > pm {
		return Endpoint{}, bad("EndpointConfig.MTU", strconv.Itoa(mtu), fmt.Sprintf("more than the MTU of parent %s, %d", parent.Attrs().Name, pm))
	}
	ch, err := ep.NS.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	unlock, err := locks.Endpoint(n.host, n.cfg.Name, ep.ID)
	if err != nil {
		return Endpoint{}, err
	}
	defer unlock(false)
	defer n.state.lock(n.lockKey(ep.ID))()
	if _, err := h.LinkByName(n.anchor); err != nil && n.cfg.Mode != ModePassthru {
		return Endpoint{}, fmt.Errorf("macvlan: network %q is gone: %w", n.cfg.Name, ErrNotFound)
	}
	if err := step(n.cfg.Name, "begin"); err != nil {
		return Endpoint{}, err
	}
	links, err := ep.NS.Links()
	if err != nil {
		return Endpoint{}, err
	}
	for _, l := range links {
		if m, ok := decodeEPMark(l.Attrs().Alias); ok && m.Net == n.cfg.Name && m.ID == ep.ID {
			return n.existing(ctx, ep, l, m)
		}
	}
	// An interface an attach of this endpoint left half made (its group,
	// not yet its mark) was never acknowledged: it goes, and the attach
	// starts again.
	for i := 0; i < len(links); i++ {
		if l := links[i]; l.Attrs().Group == epGroup(n.cfg.Name, ep.ID) && l.Type() == "macvlan" && !marked(l) {
			if err := n.deleteLink(ep.NS, l); err != nil && !nlerr.NotExist(err) {
				return Endpoint{}, &netns.OpError{Op: "macvlan.delete", NS: ep.NS.String(), Name: l.Attrs().Name, Err: err}
			}
			links = slices.Delete(links, i, i+1)
			i--
		}
	}
	ifName := ep.IfName
	if ifName == "" {
		ifName = ctrlink.NextIfName(links)
	} else if slices.ContainsFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == ifName }) {
		return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: %s exists in %s: %w", ep.ID, n.cfg.Name, ifName, ep.NS, ErrExists)
	}
	mark, err := encodeMark(epMark{Kind: markerEP, Net: n.cfg.Name, ID: ep.ID, Gateway: ep.DefaultRoute, Prio: ep.GatewayPriority})
	if err != nil {
		return Endpoint{}, bad("EndpointConfig.ID", ep.ID, err.Error())
	}

	owner := endpointOwner(n.cfg.Name, ep.ID)
	passthru := n.cfg.Mode == ModePassthru
	if passthru {
		// One container per passthru network: the kernel allows one
		// macvlan on a passthru parent.
		_, allocs, err := n.alloc.Inspect(ctx, n.pool)
		if err != nil {
			return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
		}
		if eps := endpoints(n.cfg.Name, allocs); len(eps) > 0 {
			return Endpoint{}, errs.Wrap(ErrInUse, "macvlan: attach %q to passthru network %q: it has container %q", ep.ID, n.cfg.Name, eps[0].ID)
		}
	}
	al, anchor, err := n.allocate(ctx, ep.ID, ep.Addrs)
	if errors.Is(err, ipam.ErrNotFound) {
		// The pool goes with the network: it was deleted.
		return Endpoint{}, errs.Wrap(ErrNotFound, "macvlan: attach %q: network %q not found", ep.ID, n.cfg.Name)
	}
	if err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	addrs, _ := leases(al)
	undo := []func(){func() { n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner) }}
	if err := step(n.cfg.Name, "allocate"); err != nil {
		undo[0]()
		return Endpoint{}, err
	}
	fail := func(err error) (Endpoint, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	// Recorded in the host before any interface has the addresses.
	undo = append(undo, func() { n.unclaim(ep.ID) })
	if err := n.claim(anchor, ep.ID, addrs); err != nil {
		return fail(err)
	}
	if err := step(n.cfg.Name, "claim"); err != nil {
		return fail(err)
	}
	if passthru {
		// The anchor holds the parent for the network; the container's
		// interface takes its place, and gives it back on Detach.
		if err := n.deleteAnchor(); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { n.makeAnchor(context.WithoutCancel(ctx)) })
	}

	mac := ep.MAC
	if mac == nil && !passthru {
		mac = veth.RandomMAC()
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = ifName
	attrs.ParentIndex = n.parent
	attrs.MTU = mtu
	attrs.HardwareAddr = mac
	attrs.Namespace = netlink.NsFd(ep.NS.Fd())
	attrs.Group = epGroup(n.cfg.Name, ep.ID)
	// Sent through the host's handle: IFLA_LINK names the parent in the
	// host, IFLA_NET_NS_FD puts the new interface in the container.
	if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: kernelMode(n.cfg.Mode)}); err != nil {
		if passthru && errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("%w (the parent is held by another macvlan): %w", err, ErrInUse)
		}
		return fail(&netns.OpError{Op: "macvlan.create", NS: ep.NS.String(), Name: ifName, Err: err})
	}
	// From here on the interface goes with a failure. (Not through the
	// Macvlan value: the library filled its Index by looking the name up
	// in the host.)
	undo = append(undo, func() {
		if l, err := ch.LinkByName(ifName); err == nil {
			ch.LinkDel(l)
		}
	})
	if afterLink != nil {
		if err := afterLink(); err != nil {
			return fail(err)
		}
	}
	if err := step(n.cfg.Name, "link"); err != nil {
		return fail(err)
	}
	l, err := ch.LinkByName(ifName)
	if err != nil {
		return fail(&netns.OpError{Op: "macvlan.create", NS: ep.NS.String(), Name: ifName, Err: err})
	}
	if err := ch.LinkSetAlias(l, mark); err != nil {
		return fail(&netns.OpError{Op: "macvlan.mark", NS: ep.NS.String(), Name: ifName, Err: err})
	}
	if err := ctrlink.Configure(ep.NS, "macvlan", l, addrs, n.cfg.Subnets, ep.DefaultRoute, baseMetric-ep.GatewayPriority); err != nil {
		return fail(err)
	}
	if err := ctrlink.Announce(ep.NS, l.Attrs().Index, l.Attrs().HardwareAddr, addrs, nil); err != nil {
		return fail(err)
	}
	n.state.remember(ep.ID, ep.NS)
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: ifName, MAC: l.Attrs().HardwareAddr, Addrs: addrs, DefaultRoute: ep.DefaultRoute}, nil
}

// epGroup is the device group of an endpoint's interface.
func epGroup(network, id string) uint32 { return ctrlink.Group("macvlan/" + network + "/" + id) }

// marked reports whether l carries an nsnet mark of this package.
func marked(l netlink.Link) bool {
	_, ok := decodeEPMark(l.Attrs().Alias)
	return ok
}

// attachErr wraps an error of Attach; the IPAM's "no such pool" (the
// network was deleted meanwhile) is ErrNotFound.
func (n *Network) attachErr(id string, err error) error {
	if errors.Is(err, ipam.ErrNotFound) && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w (%w)", ErrNotFound, err)
	}
	return fmt.Errorf("macvlan: attach %q to %q: %w", id, n.cfg.Name, err)
}

// existing returns the endpoint whose interface l is, if it was made with
// the settings ep asks for.
func (n *Network) existing(ctx context.Context, ep EndpointConfig, l netlink.Link, m epMark) (Endpoint, error) {
	a := l.Attrs()
	mtu := ep.MTU
	if mtu == 0 {
		mtu = n.cfg.MTU
	}
	same := l.Type() == "macvlan" && a.ParentIndex == n.parent &&
		(ep.IfName == "" || ep.IfName == a.Name) &&
		(ep.MAC == nil || ep.MAC.String() == a.HardwareAddr.String()) &&
		mtu == a.MTU && ep.DefaultRoute == m.Gateway && ep.GatewayPriority == m.Prio
	if !same {
		return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: attached with other settings: %w", ep.ID, n.cfg.Name, ErrExists)
	}
	// Allocate is idempotent per owner: it returns what the endpoint holds
	// (and fails with ErrExists if it holds another static address).
	// An allocation lost behind nsnet's back is made again with the
	// addresses the interface has.
	static := ep.Addrs
	if len(static) == 0 {
		if _, allocs, err := n.alloc.Inspect(ctx, n.pool); err == nil && !slices.ContainsFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner(n.cfg.Name, ep.ID) }) {
			static = ctrlink.Addrs(ep.NS, l, n.cfg.Subnets)
		}
	}
	al, anchor, err := n.allocate(ctx, ep.ID, static)
	if errors.Is(err, ipam.ErrExists) {
		return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: attached with another address: %w (%w)", ep.ID, n.cfg.Name, ErrExists, err)
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("macvlan: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	addrs, _ := leases(al)
	if err := n.claim(anchor, ep.ID, addrs); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	// Repair what drifted: addresses, up, the default route.
	if err := ctrlink.Configure(ep.NS, "macvlan", l, addrs, n.cfg.Subnets, m.Gateway, baseMetric-m.Prio); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	if err := ctrlink.Announce(ep.NS, a.Index, a.HardwareAddr, addrs, nil); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	n.state.remember(ep.ID, ep.NS)
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: a.Name, MAC: a.HardwareAddr, Addrs: addrs, DefaultRoute: m.Gateway}, nil
}

// deleteLink deletes a container's interface. It returns once the kernel
// has taken the interface, its addresses and routes out of the container
// (linkdel), not after the kernel freed it, 16 ms later: that wait is for
// nothing nsnet or the container can observe. A passthru network waits
// for it: its anchor can take the parent back only once the kernel let go
// of the container's interface.
func (n *Network) deleteLink(ctr *netns.NS, l netlink.Link) error {
	if n.cfg.Mode != ModePassthru {
		return linkdel.Delete(ctr, l.Attrs().Index)
	}
	ch, err := ctr.Netlink()
	if err != nil {
		return err
	}
	return ch.LinkDel(l)
}

// findEndpoint returns the interface in ns that carries the mark of
// endpoint id of the network, or nil.
func (n *Network) findEndpoint(ns *netns.NS, id string) (netlink.Link, epMark, error) {
	links, err := ns.Links()
	if err != nil {
		return nil, epMark{}, err
	}
	var half netlink.Link
	for _, l := range links {
		if m, ok := decodeEPMark(l.Attrs().Alias); ok && m.Net == n.cfg.Name && m.ID == id {
			return l, m, nil
		}
		if l.Attrs().Group == epGroup(n.cfg.Name, id) && l.Type() == "macvlan" && !marked(l) {
			half = l
		}
	}
	// Half made: the endpoint's all the same.
	return half, epMark{Kind: markerEP, Net: n.cfg.Name, ID: id}, nil
}

// Detach takes a container's interface off the network, like `docker
// network disconnect`: it deletes the interface in ctr (found by its mark;
// its addresses and routes go with it) and releases the addresses. ctr nil
// means the namespace Attach was given in this process, if any; when none
// is known, only the addresses are released (the interface goes when its
// namespace does). The container's other networks stay as they are.
// Detaching what is not attached succeeds, also when the container's
// namespace or the interface is already gone. For a passthru network the
// anchor takes the parent back.
//
// Detach returns once the kernel has taken the interface, its addresses
// and routes out of the container, not after it has freed the device
// (16 ms later, RCU grace periods): see the package doc's Performance.
func (n *Network) Detach(ctx context.Context, id string, ctr *netns.NS) (err error) {
	defer func() { err = sentinel(err) }()
	if err := n.usable(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := locks.Endpoint(n.host, n.cfg.Name, id)
	if err != nil {
		return err
	}
	err = n.detach(ctx, id, ctr, true)
	unlock(err == nil)
	return err
}

func (n *Network) detach(ctx context.Context, id string, ctr *netns.NS, restore bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	defer n.state.lock(n.lockKey(id))()
	if ctr == nil {
		ctr = n.state.ns(id)
	}
	if ctr != nil {
		l, _, err := n.findEndpoint(ctr, id)
		switch {
		case errors.Is(err, netns.ErrClosed) || nlerr.NotExist(err):
			// The container is gone, and its interface with it.
		case err != nil:
			return err
		case l != nil:
			if err := n.deleteLink(ctr, l); err != nil && !nlerr.NotExist(err) {
				return &netns.OpError{Op: "macvlan.detach", NS: ctr.String(), Name: l.Attrs().Name, Err: err}
			}
		}
	}
	if err := step(n.cfg.Name, "unplug"); err != nil {
		return err
	}
	if err := n.unclaim(id); err != nil {
		return err
	}
	if err := step(n.cfg.Name, "unclaim"); err != nil {
		return err
	}
	if err := n.alloc.Release(ctx, n.pool, endpointOwner(n.cfg.Name, id)); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	n.state.remember(id, nil)
	if restore && n.cfg.Mode == ModePassthru {
		h, err := n.host.Netlink()
		if err != nil {
			return err
		}
		_, _, perr := n.alloc.Inspect(ctx, n.pool)
		if _, err := h.LinkByName(n.anchor); err != nil && perr == nil {
			// Best effort: if the container's interface still holds the
			// parent (its namespace unknown here), the anchor comes back
			// with the next New of the network.
			if err := n.makeAnchor(ctx); err != nil && !errors.Is(err, ErrInUse) {
				return err
			}
		}
	}
	return nil
}
