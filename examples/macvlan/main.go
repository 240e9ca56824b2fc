//go:build linux

// Command macvlan reproduces macvlan across hosts: two hosts
// on one Ethernet segment (namespaces joined by an underlay bridge, each
// with its uplink eth0 as the parent) have a macvlan network 172.29.0.0/16
// (gateway 172.29.0.254) on eth0, and containers with the static addresses
// 172.29.0.81 and 172.29.0.82, one per host, chosen by hand as the guides
// do (the hosts share no IPAM). The containers reach each other across the
// hosts without NAT; they cannot reach their own host, even though it
// routes the subnet out of eth0, until the host gets a shim; nor the
// network beyond the hosts, until one is also connected to a bridge
// network, which gives it egress through the host's NAT.
//
//	go run ./examples/macvlan    # as root
package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/macvlan"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log := env.Log
	addr, prefix := netip.MustParseAddr, netip.MustParsePrefix
	hosts, err := env.Underlay(ctx, 2)
	if !log.OK("two hosts on one segment, eth0 198.18.0.1 and .2; beyond them 198.18.0.254", err) {
		return err
	}
	h1 := hosts[0]

	// docker network create -d macvlan --subnet 172.29.0.0/16
	//   --gateway 172.29.0.254 -o parent=eth0 s10, on each host, each with
	// its own IPAM.
	subnets := []ipam.SubnetConfig{{Subnet: prefix("172.29.0.0/16"), Gateway: addr("172.29.0.254")}}
	var nets []*macvlan.Network
	for i, h := range hosts {
		alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
		if err != nil {
			return err
		}
		n, err := macvlan.New(ctx, h.NS, alloc, macvlan.Config{Name: "s10", Parent: "eth0", Subnets: subnets})
		if !log.OK(fmt.Sprintf("host %d: macvlan network s10 on eth0, 172.29.0.0/16", i+1), err) {
			return err
		}
		defer n.Delete(ctx, true)
		nets = append(nets, n)
	}

	// docker run --network s10 --ip 172.29.0.81 (host 1), .82 (host 2)
	c1, err := env.Container()
	if err != nil {
		return err
	}
	c2, err := env.Container()
	if err != nil {
		return err
	}
	a1, a2 := addr("172.29.0.81"), addr("172.29.0.82")
	e1, err := nets[0].Attach(ctx, macvlan.EndpointConfig{ID: "c1", NS: c1, Addrs: []netip.Addr{a1}, DefaultRoute: true})
	if !log.OK("host 1: c1 with 172.29.0.81", err) {
		return err
	}
	log.Printf("c1: %s %s, MAC %s", e1.IfName, e1.Addrs[0], e1.MAC)
	e2, err := nets[1].Attach(ctx, macvlan.EndpointConfig{ID: "c2", NS: c2, Addrs: []netip.Addr{a2}, DefaultRoute: true})
	if !log.OK("host 2: c2 with 172.29.0.82", err) {
		return err
	}
	log.Printf("c2: %s %s, MAC %s", e2.IfName, e2.Addrs[0], e2.MAC)

	log.OK("c1 pings c2 across the hosts", nstest.Ping(ctx, c1, a2))
	log.OK("c2 pings c1 across the hosts", nstest.Ping(ctx, c2, a1))
	log.OK("c1 talks TCP to c2, which sees 172.29.0.81 (no NAT)", check.Exchange(ctx, c1, c2, "172.29.0.82:8080", "172.29.0.81"))

	// The host cannot reach its own container: not for want of a route
	// (host 1 routes the subnet out of eth0 here), but because the kernel
	// hands nothing from a parent to the macvlans on it.
	undo, err := route(h1.NS, "eth0", prefix("172.29.0.0/16"))
	if err != nil {
		return err
	}
	defer undo()
	log.Refused("host 1 reaches its own c1 (with a route out of eth0)", nstest.Ping(ctx, h1.NS, a1))
	log.Refused("c1 reaches host 1", nstest.Ping(ctx, c1, h1.Addr))
	out, err := nstest.NewServer(env.Host, "tcp", check.UnderlayGateway.String()+":80")
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = nstest.Exchange(ctx, c1, "tcp", out.Addr.String(), "GET /")
	log.Refused("c1 reaches the server beyond the hosts, "+out.Addr.String(), err)

	// The shim: ip link add mv-... link eth0 type macvlan mode bridge;
	// ip addr add 172.29.0.91/32 dev mv-...; ip route add 172.29.0.81/32 dev mv-...
	shim, err := nets[0].AddShim(ctx, macvlan.ShimConfig{Addr: addr("172.29.0.91"), Routes: []netip.Prefix{prefix("172.29.0.81/32")}})
	if !log.OK("host 1: a shim "+shim.Name+" with 172.29.0.91, routing 172.29.0.81 through it", err) {
		return err
	}
	log.OK("host 1 pings c1 through the shim", nstest.Ping(ctx, h1.NS, a1))
	log.OK("host 1 talks TCP to c1, which sees the shim's address", check.Exchange(ctx, h1.NS, c1, "172.29.0.81:8080", "172.29.0.91"))
	log.OK("c1 pings host 1 at its shim address", nstest.Ping(ctx, c1, addr("172.29.0.91")))

	// docker network connect egress c1: a bridge network with masquerade
	// gives c1 the way out; its default route there has the higher
	// priority.
	brAlloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		return err
	}
	egress, err := bridge.New(ctx, h1.NS, brAlloc, bridge.Config{Name: "egress", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.18.0.0/16")}}})
	if !log.OK("host 1: bridge network egress, 172.18.0.0/16", err) {
		return err
	}
	defer egress.Delete(ctx, true)
	masq := nat.Network{Bridge: egress.Config().Bridge, Subnets: []netip.Prefix{prefix("172.18.0.0/16")}}
	if err := nat.Masquerade(ctx, h1.NS, masq); !log.OK("host 1: masquerade 172.18.0.0/16", err) {
		return err
	}
	defer nat.Remove(ctx, h1.NS, masq.Bridge)
	eb, err := egress.Attach(ctx, bridge.EndpointConfig{ID: "c1", NS: c1, DefaultRoute: true, GatewayPriority: 1})
	if !log.OK("docker network connect egress c1: "+eb.IfName+" "+eb.Addrs[0].String(), err) {
		return err
	}
	r, err := nstest.Exchange(ctx, c1, "tcp", out.Addr.String(), "GET /")
	log.OK(fmt.Sprintf("c1 reaches the server beyond the hosts, which sees host 1's %s", h1.Addr),
		check.Expect(err, r.Peer.Addr() != h1.Addr, "it saw %s", r.Peer.Addr()))
	log.OK("c1 still reaches c2 on the macvlan network", nstest.Ping(ctx, c1, a2))
	_, err = nstest.Exchange(ctx, c2, "tcp", out.Addr.String(), "GET /")
	log.Refused("c2, on the macvlan network only, reaches the server beyond", err)
	if err := egress.Detach(ctx, "c1"); err != nil {
		return err
	}

	// Teardown: the shim goes, c1 leaves s10.
	log.OK("host 1: the shim removed", nets[0].RemoveShim(ctx))
	log.Refused("host 1 reaches c1 without the shim", nstest.Ping(ctx, h1.NS, a1))
	log.OK("docker network disconnect s10 c1", nets[0].Detach(ctx, "c1", c1))
	log.Refused("c2 reaches c1 after the disconnect", nstest.Ping(ctx, c2, a1))
	return nil
}

// route adds a route to dst out of link name in ns (metric 500), like `ip
// route add DST dev NAME metric 500`, and returns its removal.
func route(ns *netns.NS, name string, dst netip.Prefix) (func(), error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}, Scope: netlink.SCOPE_LINK, Priority: 500}
	if err := h.RouteAdd(r); err != nil {
		return nil, fmt.Errorf("ip route add %s dev %s: %w", dst, name, err)
	}
	return func() { h.RouteDel(r) }, nil
}
