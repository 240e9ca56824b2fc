package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

// afterVeth, when a test sets it, is called by Attach once the veth pair
// exists, to inject a failure half way.
var afterVeth func() error

// endpointOwner is the IPAM owner of an endpoint's addresses.
func endpointOwner(network, id string) string { return network + "/" + id }

// epGroup is the device group of an endpoint's host veth.
func epGroup(network, id string) uint32 { return ctrlink.Group("bridge/" + network + "/" + id) }

// hostVethNames is how many names an endpoint's host veth may have: the
// first is taken unless a link that is not the endpoint's has it.
const hostVethNames = 4

// hostVethName derives the host-side veth's name from the network and the
// endpoint, so that a later call (or process) finds it without listing the
// bridge's ports: "veth" and 11 hex digits. k picks one of hostVethNames
// names, for when a foreign link took the first.
func hostVethName(network, id string, k int) string {
	key := "nsnet/endpoint/" + network + "/" + id
	if k > 0 {
		key += "/" + strconv.Itoa(k)
	}
	sum := sha256.Sum256([]byte(key))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

// findHostVeth looks at the names endpoint id's host veth may have: it
// returns the veth if it exists (marked as the endpoint's), else the first
// name no link has. A veth the endpoint's attach left half made (its group,
// not its mark) is deleted on the way if repair: it was never
// acknowledged.
func (n *Network) findHostVeth(id string, repair bool) (string, netlink.Link, error) {
	h, err := n.host.Netlink()
	if err != nil {
		return "", nil, err
	}
	free := ""
	for k := range hostVethNames {
		name := hostVethName(n.cfg.Name, id, k)
		l, err := h.LinkByName(name)
		if nlerr.NotExist(err) {
			if free == "" {
				free = name
			}
			continue
		}
		if err != nil {
			return "", nil, &netns.OpError{Op: "bridge.lookup", NS: n.host.String(), Name: name, Err: err}
		}
		if m, ok := decodeEPMark(l.Attrs().Alias); ok && m.Net == n.cfg.Name && m.ID == id {
			return name, l, nil
		}
		if l.Attrs().Group == epGroup(n.cfg.Name, id) && l.Type() == "veth" {
			if !repair {
				continue
			}
			if err := linkdel.Delete(n.host, l.Attrs().Index); err != nil && !nlerr.NotExist(err) {
				return "", nil, &netns.OpError{Op: "bridge.delete", NS: n.host.String(), Name: name, Err: err}
			}
			if free == "" {
				free = name
			}
		}
	}
	if free == "" {
		return "", nil, fmt.Errorf("bridge: endpoint %q: links that are not nsnet's have all %d names of its host veth: %w", id, hostVethNames, ErrExists)
	}
	return free, nil, nil
}

// Attach connects a container to the network, like `docker network connect`:
// a veth pair whose host end is a port of the bridge (hairpin on, isolated
// when ICC is off) and whose container end is created directly in ep.NS as
// eth0 (or the next free ethN), with an address from each subnet of the
// network (or the static ones asked for), the MTU of the network, router
// advertisements ignored, and the default route via the gateway if
// ep.DefaultRoute. Once the port forwards, the container's addresses are
// announced (a gratuitous ARP for each IPv4 address, an unsolicited
// neighbour advertisement for each IPv6 one), so neighbours forget a
// previous owner of a reused address at once.
//
// Attaching an endpoint that is attached with the same settings returns it;
// with other settings it fails with ErrExists. The host's own namespace
// fails with ErrHostMode. A static address outside the network or taken
// fails with the IPAM's error. A failure half way removes the veth and
// releases the addresses.
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
	if err := ctx.Err(); err != nil {
		return Endpoint{}, err
	}
	unlock, err := locks.Endpoint(n.host, n.cfg.Name, ep.ID)
	if err != nil {
		return Endpoint{}, err
	}
	defer unlock(false)
	h, err := n.host.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	br, err := h.LinkByIndex(n.index)
	if err != nil || br.Attrs().Name != n.cfg.Bridge || !n.owns(br) {
		return Endpoint{}, fmt.Errorf("bridge: network %q: its bridge is gone: %w", n.cfg.Name, ErrNotFound)
	}
	name, l, err := n.findHostVeth(ep.ID, true)
	if err != nil {
		return Endpoint{}, err
	}
	if l != nil {
		return n.existing(ctx, ep, l)
	}

	ifName := ep.IfName
	if ifName == "" {
		links, err := ep.NS.Links()
		if err != nil {
			return Endpoint{}, err
		}
		ifName = ctrlink.NextIfName(links)
	}
	mac := ep.MAC
	if mac == nil {
		mac = veth.RandomMAC()
	}
	mark, err := encodeMark(epMark{Kind: markerEP, Net: n.cfg.Name, ID: ep.ID, IfName: ifName, MAC: mac.String(), Gateway: ep.DefaultRoute, Prio: ep.GatewayPriority})
	if err != nil {
		return Endpoint{}, &netns.ValidationError{Pkg: "bridge", Field: "EndpointConfig.ID", Value: ep.ID, Reason: err.Error()}
	}
	owner := endpointOwner(n.cfg.Name, ep.ID)
	addrs, err := n.allocate(ctx, owner, ep.Addrs)
	if err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	release := func() { n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner) }
	if err := step(n.cfg.Name, "allocate"); err != nil {
		release()
		return Endpoint{}, err
	}
	pair, err := veth.Pair(ctx, n.host, veth.Config{
		Name:  name,
		Peer:  veth.End{NS: ep.NS, Name: ifName, MAC: mac},
		MTU:   n.cfg.MTU,
		Group: epGroup(n.cfg.Name, ep.ID),
	})
	if err != nil {
		release()
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%w (%w)", ErrExists, err)
		}
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	guarded := false
	fail := func(err error) (Endpoint, error) {
		veth.Delete(context.WithoutCancel(ctx), n.host, name)
		if guarded {
			nft.UnguardPort(context.WithoutCancel(ctx), n.host, pair.Host.Index, addrs)
		}
		release()
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	if afterVeth != nil {
		if err := afterVeth(); err != nil {
			return fail(err)
		}
	}
	// The pair is the endpoint's by its group from the moment it exists;
	// the mark, which the kernel ignores in the creating request, follows.
	if err := step(n.cfg.Name, "veth"); err != nil {
		return fail(err)
	}
	// The port's guard, before the port is up, in nftables (which the
	// kernel's link requests do not wait for): meanwhile, one request
	// marks the veth and makes it a port of the bridge (down: it
	// forwards nothing until openPort), and its addresses are claimed.
	guard := make(chan error, 1)
	go func() { guard <- nft.GuardPort(ctx, n.host, pair.Host.Index, addrs) }()
	hl := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: pair.Host.Index, Name: name}}
	err = markPort(n.host, pair.Host.Index, n.index, mark)
	if err != nil {
		err = &netns.OpError{Op: "bridge.mark", NS: n.host.String(), Name: name, Err: err}
	} else {
		err = n.claimAddrs(hl, addrs)
	}
	gerr := <-guard
	guarded = gerr == nil
	if err != nil {
		return fail(err)
	}
	if err := step(n.cfg.Name, "mark"); err != nil {
		return fail(err)
	}
	if gerr != nil {
		return fail(gerr)
	}
	if err := step(n.cfg.Name, "guard"); err != nil {
		return fail(err)
	}
	watch, err := openPort(n.host, pair.Host.Index, name, n.cfg.DisableICC)
	if err != nil {
		return fail(err)
	}
	defer watch.close()
	if err := step(n.cfg.Name, "port"); err != nil {
		return fail(err)
	}
	peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: pair.Peer.Index, Name: pair.Peer.Name}}
	if err := ctrlink.Configure(ep.NS, "bridge", peer, addrs, n.cfg.Subnets, ep.DefaultRoute, baseMetric-ep.GatewayPriority); err != nil {
		return fail(err)
	}
	// Neighbours that cached a previous owner of the addresses learn the
	// new MAC once the port forwards (Attach returns then: the endpoint
	// works).
	if err := step(n.cfg.Name, "configure"); err != nil {
		return fail(err)
	}
	if err := ctrlink.Announce(ep.NS, pair.Peer.Index, mac, addrs, watch.forwarding); err != nil {
		return fail(err)
	}
	if err := step(n.cfg.Name, "announce"); err != nil {
		return fail(err)
	}
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: ifName, MAC: mac, Addrs: addrs, HostVeth: name, DefaultRoute: ep.DefaultRoute}, nil
}

// attachErr wraps an error of Attach; the IPAM's "no such pool" (the
// network was deleted meanwhile) is ErrNotFound.
func (n *Network) attachErr(id string, err error) error {
	if errors.Is(err, ipam.ErrNotFound) && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w (%w)", ErrNotFound, err)
	}
	return fmt.Errorf("bridge: attach %q to %q: %w", id, n.cfg.Name, err)
}

// existing returns the endpoint whose host veth l is, if it was made with
// the settings ep asks for, after repairing what drifted: the port (of the
// bridge, hairpin, isolation, up) and the container's interface (its
// addresses, up, default route).
func (n *Network) existing(ctx context.Context, ep EndpointConfig, l netlink.Link) (Endpoint, error) {
	m, _ := decodeEPMark(l.Attrs().Alias)
	mac, _ := net.ParseMAC(m.MAC)
	same := (ep.IfName == "" || ep.IfName == m.IfName) &&
		(ep.MAC == nil || ep.MAC.String() == m.MAC) &&
		ep.DefaultRoute == m.Gateway && ep.GatewayPriority == m.Prio
	// The container end must be in ep.NS under its name.
	ch, err := ep.NS.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	peer, err := ch.LinkByName(m.IfName)
	if err != nil || peer.Attrs().ParentIndex != l.Attrs().Index {
		same = false
	}
	if !same {
		return Endpoint{}, fmt.Errorf("bridge: attach %q to %q: attached with other settings: %w", ep.ID, n.cfg.Name, ErrExists)
	}
	// Allocate is idempotent per owner: it returns what the endpoint holds
	// (and fails with ErrExists if it holds another static address). An
	// allocation lost behind nsnet's back is made again with the
	// addresses the interface has.
	static := ep.Addrs
	if len(static) == 0 {
		if !n.holds(ctx, ep.ID) {
			static = ctrlink.Addrs(ep.NS, peer, n.cfg.Subnets)
		}
	}
	al, err := n.alloc.Allocate(ctx, n.pool, endpointOwner(n.cfg.Name, ep.ID), static...)
	if err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	addrs, _ := leases(al)
	if err := n.claimAddrs(l, addrs); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	// The port's guard too (a flushed ruleset, a crash before it was set).
	if err := nft.GuardPort(ctx, n.host, l.Attrs().Index, addrs); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	// The port as Attach makes it (each step idempotent): of the bridge,
	// with its mark as it is, then readied and up.
	if err := markPort(n.host, l.Attrs().Index, n.index, l.Attrs().Alias); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, &netns.OpError{Op: "bridge.port", NS: n.host.String(), Name: l.Attrs().Name, Err: err})
	}
	watch, err := openPort(n.host, l.Attrs().Index, l.Attrs().Name, n.cfg.DisableICC)
	if err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	watch.close() // a port up already announces nothing: the announcement asks
	if err := ctrlink.Configure(ep.NS, "bridge", peer, addrs, n.cfg.Subnets, m.Gateway, baseMetric-m.Prio); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	// Every attach announces, the repeated one too: neighbours that
	// gave up on an address while it was missing hear of it at once.
	hostIdx := l.Attrs().Index
	if err := ctrlink.Announce(ep.NS, peer.Attrs().Index, peer.Attrs().HardwareAddr, addrs, func() bool { return portForwarding(n.host, hostIdx) }); err != nil {
		return Endpoint{}, n.attachErr(ep.ID, err)
	}
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: m.IfName, MAC: mac, Addrs: addrs, HostVeth: l.Attrs().Name, DefaultRoute: m.Gateway}, nil
}

// Detach disconnects an endpoint, like `docker network disconnect`: it
// deletes the veth pair (and with it the container's interface, its
// addresses and routes) and releases the addresses. The container's other
// networks stay as they are. Detaching what is not attached succeeds, also
// when the container's namespace, the veth, the bridge or the network is
// already gone, or when an attach left the endpoint half made; a process
// may detach endpoints that another process attached.
func (n *Network) Detach(ctx context.Context, id string) (err error) {
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
	err = n.detach(ctx, id)
	unlock(err == nil)
	return err
}

// detach is Detach with the locks held.
func (n *Network) detach(ctx context.Context, id string) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	// All names first: lookups made after a deletion would wait for the
	// kernel to finish it (under its rtnl lock) after Delete returned.
	var ours []netlink.Link
	for k := range hostVethNames {
		l, err := h.LinkByName(hostVethName(n.cfg.Name, id, k))
		if err != nil {
			continue
		}
		m, marked := decodeEPMark(l.Attrs().Alias)
		if marked && m.Net == n.cfg.Name && m.ID == id || !marked && l.Attrs().Group == epGroup(n.cfg.Name, id) && l.Type() == "veth" {
			ours = append(ours, l)
		}
	}
	for _, l := range ours {
		// Both ends go: the container's, and the port of the bridge. Then
		// its guard, by the elements it was given (the port and the
		// addresses its alternative names hold): not before the port is
		// down, which would pass anything in between, but while the
		// kernel finishes the deletion.
		var addrs []netip.Prefix
		for _, alt := range l.Attrs().AltNames {
			if a, ok := addrOf(alt); ok {
				addrs = append(addrs, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		var guardErr error
		err := linkdel.DeleteThen(n.host, l.Attrs().Index, func() error {
			if guardErr = step(n.cfg.Name, "linkdel"); guardErr == nil {
				guardErr = nft.UnguardPort(ctx, n.host, l.Attrs().Index, addrs)
			}
			return guardErr
		})
		if guardErr != nil {
			return guardErr
		}
		if err != nil {
			return &netns.OpError{Op: "bridge.detach", NS: n.host.String(), Name: l.Attrs().Name, Err: err}
		}
	}
	if err := step(n.cfg.Name, "unplug"); err != nil {
		return err
	}
	if err := n.alloc.Release(ctx, n.pool, endpointOwner(n.cfg.Name, id)); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return err
	}
	return nil
}

// holds reports whether endpoint id holds addresses in the pool.
func (n *Network) holds(ctx context.Context, id string) bool {
	_, allocs, err := n.alloc.Inspect(ctx, n.pool)
	return err == nil && slices.ContainsFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner(n.cfg.Name, id) })
}

// The kernel keeps which addresses live endpoints hold, whatever the IPAM
// store says (it may have been lost or reset): each host veth carries, as
// an alternative interface name (IFLA_ALT_IFNAME), one name per address
// of its container, addrName. Names are unique in a namespace and looked
// up by the kernel's name hash, so a lookup costs one request, and no two
// live endpoints of the host can claim one address.

// addrName is the alternative name of the host veth whose container holds
// a: "nsnet-" and the address, ':' written '-'.
func addrName(a netip.Addr) string { return "nsnet-" + strings.ReplaceAll(a.String(), ":", "-") }

// addrOf is addrName's inverse, or false.
func addrOf(name string) (netip.Addr, bool) {
	s, ok := strings.CutPrefix(name, "nsnet-")
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(strings.ReplaceAll(s, "-", ":"))
	return a, err == nil
}

// allocate allocates owner's addresses, and checks them against the
// kernel before handing them out: an address that a live endpoint of the
// host holds (its host veth has the address's name) goes back to that
// endpoint in the store (its allocation is made again with the addresses
// its veth names), and the allocation is tried again.
func (n *Network) allocate(ctx context.Context, owner string, static []netip.Addr) ([]netip.Prefix, error) {
	h, err := n.host.Netlink()
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		al, err := n.alloc.Allocate(ctx, n.pool, owner, static...)
		if err != nil {
			return nil, err
		}
		addrs, _ := leases(al)
		var holder netlink.Link
		for _, a := range addrs {
			if l, err := h.LinkByName(addrName(a.Addr())); err == nil {
				if m, ok := decodeEPMark(l.Attrs().Alias); !ok || endpointOwner(m.Net, m.ID) != owner {
					holder = l
					break
				}
			}
		}
		if holder == nil {
			return addrs, nil
		}
		// Lost by the store: give it back to its holder.
		n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner)
		m, ok := decodeEPMark(holder.Attrs().Alias)
		var held []netip.Addr
		for _, alt := range holder.Attrs().AltNames {
			if a, ok := addrOf(alt); ok {
				held = append(held, a)
			}
		}
		if !ok || m.Net != n.cfg.Name || try >= 8 {
			return nil, fmt.Errorf("bridge: an address of %v is held by %s: %w", addrs, holder.Attrs().Name, ipam.ErrAddrInUse)
		}
		if _, err := n.alloc.Allocate(ctx, n.pool, endpointOwner(m.Net, m.ID), held...); err != nil {
			return nil, fmt.Errorf("bridge: giving %v back to %s: %w", held, m.ID, err)
		}
	}
}

// claimAddrs gives host veth l the names of addrs (see addrName); names it
// has are kept.
func (n *Network) claimAddrs(l netlink.Link, addrs []netip.Prefix) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		name := addrName(a.Addr())
		if slices.Contains(l.Attrs().AltNames, name) {
			continue
		}
		if err := h.LinkAddAltName(l, name); err != nil {
			if errors.Is(err, os.ErrExist) {
				err = fmt.Errorf("%w (%w)", ipam.ErrAddrInUse, err)
			}
			return &netns.OpError{Op: "bridge.claim", NS: n.host.String(), Name: l.Attrs().Name + " " + name, Err: err}
		}
	}
	return nil
}
