package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// endpoints serialises the attaches and detaches of one endpoint in this
// process, whichever Network value they come through, so that a call
// cannot undo what another call for the same endpoint did (a losing attach
// releasing the winner's address).
var endpoints keylock.Map

// lockEndpoint takes the endpoint whose host veth is name in host, and
// returns the function that gives it back.
func lockEndpoint(host *netns.NS, name string) func() {
	return endpoints.Lock(host.ID().String() + "/" + name)
}

// baseMetric is the metric of a default route with GatewayPriority 0; a
// higher priority gives a lower metric, which the kernel prefers.
const baseMetric = 10000

// afterVeth, when a test sets it, is called by Attach once the veth pair
// exists, to inject a failure half way.
var afterVeth func() error

// Validate reports what is wrong with c before anything is touched.
func (c EndpointConfig) Validate() error {
	bad := func(field, value, reason string) error {
		return &netns.ValidationError{Pkg: "bridge", Field: field, Value: value, Reason: reason}
	}
	if len(c.ID) > 80 {
		return bad("EndpointConfig.ID", c.ID, "longer than 80 bytes")
	}
	if r := names.Check(c.ID, 64); r != "" {
		return bad("EndpointConfig.ID", c.ID, r)
	}
	if c.NS == nil {
		return bad("EndpointConfig.NS", "<nil>", "no container namespace")
	}
	if c.IfName != "" {
		if r := ifname.Check(c.IfName); r != "" {
			return bad("EndpointConfig.IfName", c.IfName, r)
		}
	}
	if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 != 0) {
		return bad("EndpointConfig.MAC", c.MAC.String(), "not a unicast Ethernet address")
	}
	if c.GatewayPriority < -baseMetric+1 || c.GatewayPriority > baseMetric {
		return bad("EndpointConfig.GatewayPriority", strconv.Itoa(c.GatewayPriority), fmt.Sprintf("not within ±%d", baseMetric-1))
	}
	for _, a := range c.Addrs {
		if !a.IsValid() {
			return bad("EndpointConfig.Addrs", a.String(), "not an address")
		}
	}
	return nil
}

// endpointOwner is the IPAM owner of an endpoint's addresses.
func endpointOwner(network, id string) string { return network + "/" + id }

// hostVethName derives the host-side veth's name from the network and the
// endpoint, so that a later call (or process) finds it without listing the
// bridge's ports: "veth" and 11 hex digits.
func hostVethName(network, id string) string {
	sum := sha256.Sum256([]byte("nsnet/endpoint/" + network + "/" + id))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

// Attach connects a container to the network, like `docker network connect`:
// a veth pair whose host end is a port of the bridge (hairpin on, isolated
// when ICC is off) and whose container end is created directly in ep.NS as
// eth0 (or the next free ethN), with an address from each subnet of the
// network (or the static ones asked for), the MTU of the network, router
// advertisements ignored, a gratuitous ARP when it comes up (arp_notify, so
// neighbours forget a previous owner of a reused address), and the default
// route via the gateway if ep.DefaultRoute.
//
// Attaching an endpoint that is attached with the same settings returns it;
// with other settings it fails with ErrExists. The host's own namespace
// fails with ErrHostMode. A static address outside the network or taken
// fails with the IPAM's error. A failure half way removes the veth and
// releases the addresses.
func (n *Network) Attach(ctx context.Context, ep EndpointConfig) (Endpoint, error) {
	if err := ep.Validate(); err != nil {
		return Endpoint{}, err
	}
	if ep.NS.Equal(n.host) {
		return Endpoint{}, ErrHostMode
	}
	if err := ctx.Err(); err != nil {
		return Endpoint{}, err
	}
	h, err := n.host.Netlink()
	if err != nil {
		return Endpoint{}, err
	}
	br, err := h.LinkByIndex(n.index)
	if err != nil || br.Attrs().Name != n.cfg.Bridge {
		return Endpoint{}, fmt.Errorf("bridge: network %q: its bridge is gone: %w", n.cfg.Name, ErrNotFound)
	}
	name := hostVethName(n.cfg.Name, ep.ID)
	defer lockEndpoint(n.host, name)()
	if l, err := h.LinkByName(name); err == nil {
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
	owner := endpointOwner(n.cfg.Name, ep.ID)
	al, err := n.alloc.Allocate(ctx, n.pool, owner, ep.Addrs...)
	if err != nil {
		return Endpoint{}, fmt.Errorf("bridge: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	addrs, _ := leases(al)
	release := func() { n.alloc.Release(context.WithoutCancel(ctx), n.pool, owner) }

	mark, err := encodeMark(epMark{Kind: markerEP, Net: n.cfg.Name, ID: ep.ID, IfName: ifName, MAC: mac.String(), Gateway: ep.DefaultRoute, Prio: ep.GatewayPriority})
	if err != nil {
		release()
		return Endpoint{}, &netns.ValidationError{Pkg: "bridge", Field: "EndpointConfig.ID", Value: ep.ID, Reason: err.Error()}
	}
	pair, err := veth.Pair(ctx, n.host, veth.Config{
		Name:  name,
		Peer:  veth.End{NS: ep.NS, Name: ifName, MAC: mac},
		MTU:   n.cfg.MTU,
		Alias: mark,
	})
	if err != nil {
		if l, lerr := h.LinkByName(name); errors.Is(err, unix.EEXIST) && lerr == nil {
			// Another process attached the endpoint first: the addresses
			// are its (Allocate gave this call the same ones).
			return n.existing(ctx, ep, l)
		}
		release()
		return Endpoint{}, fmt.Errorf("bridge: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	fail := func(err error) (Endpoint, error) {
		veth.Delete(context.WithoutCancel(ctx), n.host, name)
		release()
		return Endpoint{}, fmt.Errorf("bridge: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	if afterVeth != nil {
		if err := afterVeth(); err != nil {
			return fail(err)
		}
	}
	if err := nft.GuardPort(ctx, n.host, pair.Host.Index, addrs); err != nil { // before the port is up
		return fail(err)
	}
	if err := n.wireHostEnd(pair.Host); err != nil {
		return fail(err)
	}
	peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: pair.Peer.Index, Name: pair.Peer.Name}}
	if err := ctrlink.Configure(ep.NS, "bridge", peer, addrs, n.cfg.Subnets, ep.DefaultRoute, baseMetric-ep.GatewayPriority); err != nil {
		return fail(err)
	}
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: ifName, MAC: mac, Addrs: addrs, HostVeth: name, DefaultRoute: ep.DefaultRoute}, nil
}

// wireHostEnd makes the host end a port of the bridge (hairpin on, isolated
// if ICC is off), without router advertisements, and sets it up.
func (n *Network) wireHostEnd(l veth.Link) error {
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: l.Index, Name: l.Name}}
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: "bridge." + op, NS: n.host.String(), Name: l.Name, Err: err}
	}
	// A bridge port needs no addresses: no IPv6 on it, so neither router
	// advertisements nor the link-local address, DAD and MLD traffic that
	// every new port would otherwise flood to every other port.
	if err := n.host.SetSysctl("net/ipv6/conf/"+l.Name+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := h.LinkSetMasterByIndex(link, n.index); err != nil {
		return opErr("port", err)
	}
	// Hairpin: a container reaches its own published ports through the
	// host, which sends the packet back out of the port it came in by.
	if err := h.LinkSetHairpin(link, true); err != nil {
		return opErr("hairpin", err)
	}
	if n.cfg.DisableICC {
		if err := h.LinkSetIsolated(link, true); err != nil {
			return opErr("isolated", err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return opErr("up", err)
	}
	return nil
}

// existing returns the endpoint whose host veth l is, if it was made with
// the settings ep asks for.
func (n *Network) existing(ctx context.Context, ep EndpointConfig, l netlink.Link) (Endpoint, error) {
	m, ok := decodeEPMark(l.Attrs().Alias)
	if !ok || m.Net != n.cfg.Name || m.ID != ep.ID {
		return Endpoint{}, fmt.Errorf("bridge: attach %q: %s exists and is not its veth: %w", ep.ID, l.Attrs().Name, ErrExists)
	}
	mac, _ := net.ParseMAC(m.MAC)
	// Allocate is idempotent per owner: it returns what the endpoint holds
	// (and fails with ErrExists if it holds another static address).
	al, err := n.alloc.Allocate(ctx, n.pool, endpointOwner(n.cfg.Name, ep.ID), ep.Addrs...)
	if err != nil {
		return Endpoint{}, fmt.Errorf("bridge: attach %q to %q: %w", ep.ID, n.cfg.Name, err)
	}
	addrs, _ := leases(al)
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
	return Endpoint{ID: ep.ID, Network: n.cfg.Name, NS: ep.NS, IfName: m.IfName, MAC: mac, Addrs: addrs, HostVeth: l.Attrs().Name, DefaultRoute: m.Gateway}, nil
}

// Detach disconnects an endpoint, like `docker network disconnect`: it
// deletes the veth pair (and with it the container's interface, its
// addresses and routes) and releases the addresses. The container's other
// networks stay as they are. Detaching what is not attached succeeds, also
// when the container's namespace, the veth or the bridge is already gone; a
// process may detach endpoints that another process attached.
func (n *Network) Detach(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name := hostVethName(n.cfg.Name, id)
	h, err := n.host.Netlink()
	if err != nil {
		return err
	}
	defer lockEndpoint(n.host, name)()
	if l, err := h.LinkByName(name); err == nil {
		if m, ok := decodeEPMark(l.Attrs().Alias); ok && m.Net == n.cfg.Name && m.ID == id {
			// Both ends go: the container's, and the port of the bridge.
			if err := linkdel.Delete(n.host, l.Attrs().Index); err != nil && !nlerr.NotExist(err) {
				return &netns.OpError{Op: "bridge.detach", NS: n.host.String(), Name: name, Err: err}
			}
			if err := nft.UnguardPort(ctx, n.host, l.Attrs().Index); err != nil { // the port is gone
				return err
			}
		}
	}
	return n.alloc.Release(ctx, n.pool, endpointOwner(n.cfg.Name, id))
}
