package portmap_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeLoopbackVia makes ns send packets for 127.0.0.1 out of its link
// dev to gw, as an attacker next to the host can (CVE-2020-8558): lo loses
// 127.0.0.1 (and so its local route), and route_localnet lets the kernel
// route the loopback address out of dev.
func routeLoopbackVia(t *testing.T, ns *netns.NS, dev string, gw netip.Addr) {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrDel(lo, &netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("127.0.0.1/8"))}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"net/ipv4/conf/all/route_localnet", "net/ipv4/conf/" + dev + "/route_localnet"} {
		if err := ns.SetSysctl(key, "1"); err != nil {
			t.Fatal(err)
		}
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet.From(netip.MustParsePrefix("127.0.0.1/32")), Gw: gw.AsSlice()}
	if err := h.RouteAdd(r); err != nil {
		t.Fatal(err)
	}
}

// TestLocalhostMapping: a mapping on 127.0.0.1 (and a host service on
// 127.0.0.1) is out of reach of packets for 127.0.0.1 that are routed at
// the host, from the uplink or from a container, although the container's
// bridge has route_localnet on for the host's own use of the mapping.
func TestLocalhostMapping(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.48.0.0/24")
	web, webAddr := w.container(t, a, "web")
	attacker, _ := w.container(t, a, "attacker")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	nstest.Serve(t, w.host, "tcp", "127.0.0.1:9999") // a host service on localhost only
	w.publish(t, portmap.Mapping{HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: 8081, CtrAddr: webAddr, CtrPort: 80})
	lo8081 := netip.MustParseAddrPort("127.0.0.1:8081")
	reach(t, "the host to its 127.0.0.1 mapping", w.host, "tcp", lo8081)
	if v, err := w.host.Sysctl("net/ipv4/conf/" + a.Config().Bridge + "/route_localnet"); err != nil || v != "1" {
		t.Fatalf("route_localnet on the bridge: %q, %v; the test needs it on to mean anything", v, err)
	}

	routeLoopbackVia(t, attacker, "eth0", a.Config().Subnets[0].Gateway)
	routeLoopbackVia(t, w.out.NS, "eth0", w.out.HostAddr.Addr())
	for _, from := range []struct {
		what string
		ns   *netns.NS
	}{{"a container of the network", attacker}, {"the outside", w.out.NS}} {
		noReach(t, "the 127.0.0.1 mapping from "+from.what, from.ns, "tcp", lo8081)
		noReach(t, "a host service on 127.0.0.1 from "+from.what, from.ns, "tcp", netip.MustParseAddrPort("127.0.0.1:9999"))
	}
}

// TestOnlyLocalDestinations: a published port DNATs only packets for a
// local address of the host, and for a mapping on one address only those
// for that address; traffic passing through the host to another
// destination on the same port goes where it was sent (CVE-2025-67499
// class).
func TestOnlyLocalDestinations(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.49.0.0/24")
	web, webAddr := w.container(t, a, "web")
	client, _ := w.container(t, a, "client")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	nstest.Serve(t, w.out.NS, "tcp", w.out.Addr.String()+":8082")
	uplink := w.out.HostAddr.Addr()
	w.publish(t, portmap.Mapping{HostPort: 8082, CtrAddr: webAddr, CtrPort: 80})
	w.publish(t, portmap.Mapping{HostAddr: uplink, HostPort: 8083, CtrAddr: webAddr, CtrPort: 80})

	// To the outside on the published port: the outside's server answers,
	// and it saw the host's uplink address (masquerade), not a DNAT.
	r := reach(t, "the outside on a published port, through the host", client, "tcp", netip.AddrPortFrom(w.out.Addr, 8082))
	if r.Peer.Addr() != uplink {
		t.Errorf("passing through: the server saw %s; want the outside's server to see %s", r.Peer, uplink)
	}
	// A mapping on the uplink address: reached there, not on the
	// gateway's address, which is the host's too.
	reach(t, "the mapping's own address", client, "tcp", netip.AddrPortFrom(uplink, 8083))
	noReach(t, "another address of the host", client, "tcp", netip.AddrPortFrom(a.Config().Subnets[0].Gateway, 8083))
}

// TestUnpublishUDPStream: a UDP stream that keeps one source port stops
// reaching the container when its mapping goes, reaches the new container
// when the port is published again (no conntrack entry survives), and no
// entry of the mapping is left.
func TestUnpublishUDPStream(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.50.0.0/24")
	old, oldAddr := w.container(t, a, "old")
	next, nextAddr := w.container(t, a, "next")
	nstest.Serve(t, old, "udp", "0.0.0.0:53")
	nstest.Serve(t, next, "udp", "0.0.0.0:53")
	m := portmap.Mapping{Proto: "udp", HostPort: 5353, CtrAddr: oldAddr, CtrPort: 53, ID: "old"}
	if _, err := w.mp.Add(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	c, err := w.out.NS.ListenPacket("udp4", w.out.Addr.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(w.out.HostAddr.Addr(), 5353))
	// send sends one datagram and returns the answer, "" if none came.
	send := func() string {
		t.Helper()
		if _, err := c.WriteTo([]byte("x"), dst); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	// Both servers answer "peer ADDR" with the client's address (not
	// NATed here): which container answered shows in nothing else, so the
	// old one is stopped below to tell them apart.
	if got := send(); !strings.HasPrefix(got, "peer "+w.out.Addr.String()) {
		t.Fatalf("the stream before unpublishing: %q", got)
	}
	if err := w.mp.Remove(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	if n := conntrackEntries(t, w, 5353); n != 0 {
		t.Errorf("after Remove: %d conntrack entries for port 5353", n)
	}
	if got := send(); got != "" {
		t.Errorf("the stream reached a container after Remove: %q", got)
	}

	// Published again to the next container; the old one would still
	// answer if the stream's old conntrack entry sent it there.
	m2 := w.publish(t, portmap.Mapping{Proto: "udp", HostPort: 5353, CtrAddr: nextAddr, CtrPort: 53, ID: "next"})
	oldConn := conntrackTo(t, w, oldAddr)
	if got := send(); got == "" {
		t.Error("the stream does not reach the container of the new mapping")
	}
	if n := conntrackTo(t, w, oldAddr); n > oldConn {
		t.Errorf("the stream went to the old container: %d conntrack entries to it", n)
	}
	if n := conntrackTo(t, w, nextAddr); n == 0 {
		t.Error("no conntrack entry to the new container")
	}
	if err := w.mp.Remove(t.Context(), m2); err != nil {
		t.Fatal(err)
	}
	if n := conntrackEntries(t, w, 5353); n != 0 {
		t.Errorf("after the second Remove: %d conntrack entries for port 5353", n)
	}
}

// conntrackEntries counts the host's UDP conntrack entries whose original
// destination port is port.
func conntrackEntries(t *testing.T, w *world, port uint16) int {
	t.Helper()
	return countFlows(t, w, func(f *netlink.ConntrackFlow) bool { return f.Forward.DstPort == port })
}

// conntrackTo counts the host's UDP conntrack entries DNATed to addr.
func conntrackTo(t *testing.T, w *world, addr netip.Addr) int {
	t.Helper()
	return countFlows(t, w, func(f *netlink.ConntrackFlow) bool { return f.Reverse.SrcIP.Equal(addr.AsSlice()) })
}

func countFlows(t *testing.T, w *world, match func(*netlink.ConntrackFlow) bool) int {
	t.Helper()
	h, err := w.host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range flows {
		if f.Forward.Protocol == unix.IPPROTO_UDP && match(f) {
			n++
		}
	}
	return n
}

// TestIPv6 publishes IPv6 ports: on every address of the host and on one,
// reached from a container of another network and from the host, hairpin
// included; and gone after Remove.
func TestIPv6(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	dual := func(name, v4, v6 string) *bridge.Network {
		t.Helper()
		subnets := []netip.Prefix{netip.MustParsePrefix(v4), netip.MustParsePrefix(v6)}
		n, err := bridge.New(t.Context(), w.host, w.alloc, bridge.Config{Name: name,
			Subnets: []ipam.SubnetConfig{{Subnet: subnets[0]}, {Subnet: subnets[1]}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Delete(context.Background(), true) })
		if err := nat.Masquerade(t.Context(), w.host, nat.Network{Bridge: n.Config().Bridge, Subnets: subnets}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := dual("a", "10.51.0.0/24", "fd51::/64")
	b := dual("b", "10.52.0.0/24", "fd52::/64")
	web := nstest.Container(t, w.host)
	e, err := a.Attach(t.Context(), bridge.EndpointConfig{ID: "web", NS: web, DefaultRoute: true})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := w.container(t, b, "other")
	var web6 netip.Addr
	for _, p := range e.Addrs {
		if p.Addr().Is6() {
			web6 = p.Addr()
		}
	}
	nstest.Serve(t, web, "tcp6", "[::]:80")
	nstest.Serve(t, web, "udp6", "[::]:80")
	gwA, gwB := a.Config().Subnets[1].Gateway, b.Config().Subnets[1].Gateway
	for _, proto := range []string{"tcp", "udp"} {
		w.publish(t, portmap.Mapping{Proto: proto, HostPort: 8086, CtrAddr: web6, CtrPort: 80, ID: "web"})
		reach(t, proto+"6 from a container of another network", other, proto, netip.AddrPortFrom(gwB, 8086))
		reach(t, proto+"6 from the host", w.host, proto, netip.AddrPortFrom(gwA, 8086))
		reach(t, proto+"6 from the container itself (hairpin)", web, proto, netip.AddrPortFrom(gwA, 8086))
	}
	one := w.publish(t, portmap.Mapping{HostAddr: gwB, HostPort: 8087, CtrAddr: web6, CtrPort: 80})
	reach(t, "a mapping on one IPv6 address, there", other, "tcp", netip.AddrPortFrom(gwB, 8087))
	noReach(t, "a mapping on one IPv6 address, at another", other, "tcp", netip.AddrPortFrom(gwA, 8087))
	if err := w.mp.Remove(t.Context(), one); err != nil {
		t.Fatal(err)
	}
	noReach(t, "after Remove", other, "tcp", netip.AddrPortFrom(gwB, 8087))
	ms, err := w.mp.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if !m.CtrAddr.Is6() || m.HostPort != 8086 || m.HostAddr.IsValid() {
			t.Errorf("List: %s; want only the two mappings on every address, port 8086", m)
		}
	}
	if len(ms) != 2 {
		t.Errorf("List: %d mappings, want 2", len(ms))
	}
}

// TestForwardingWithoutMasquerade: a port published on a host where no
// network was given to nat.Masquerade (so nothing turned forwarding on)
// is reached from outside: Add turns forwarding on, as dockerd does.
func TestForwardingWithoutMasquerade(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	n, err := bridge.New(t.Context(), w.host, w.alloc, bridge.Config{Name: "a",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.55.0.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Delete(context.Background(), true) })
	web, webAddr := w.container(t, n, "web")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	if v, err := w.host.Sysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Fatalf("ip_forward before Add: %q, %v; the test needs it off to mean anything", v, err)
	}
	w.publish(t, portmap.Mapping{HostPort: 8090, CtrAddr: webAddr, CtrPort: 80})
	reach(t, "a published port without masquerade", w.out.NS, "tcp", netip.AddrPortFrom(w.out.HostAddr.Addr(), 8090))
}

// TestUnpublishKeepsOtherEntries: publishing and unpublishing a UDP port
// on every address of the host deletes the conntrack entries addressed to
// the host on that port, and no others: a container's own stream to the
// same port of a machine outside keeps its entry (and so its masquerade).
func TestUnpublishKeepsOtherEntries(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.56.0.0/24")
	client, _ := w.container(t, a, "client")
	_, webAddr := w.container(t, a, "web")
	nstest.Serve(t, w.out.NS, "udp", w.out.Addr.String()+":5360")
	reach(t, "the outside's UDP server on 5360", client, "udp", netip.AddrPortFrom(w.out.Addr, 5360))
	toOutside := func() int {
		return countFlows(t, w, func(f *netlink.ConntrackFlow) bool {
			return f.Forward.DstPort == 5360 && f.Forward.DstIP.Equal(w.out.Addr.AsSlice())
		})
	}
	if n := toOutside(); n == 0 {
		t.Fatal("no conntrack entry of the container's stream to the outside")
	}
	m := w.publish(t, portmap.Mapping{Proto: "udp", HostPort: 5360, CtrAddr: webAddr, CtrPort: 53})
	if n := toOutside(); n == 0 {
		t.Error("publishing udp 5360 deleted the container's entry to the outside's port 5360")
	}
	if err := w.mp.Remove(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	if n := toOutside(); n == 0 {
		t.Error("unpublishing udp 5360 deleted the container's entry to the outside's port 5360")
	}
}

// TestDNATOnlyIntoNetworks: a network is deleted while its container's
// mapping is still in the table; a packet to the published port is DNATed
// to the container's old address, which the host now routes out of its
// uplink: it must be dropped, not sent to whoever holds that address
// outside.
func TestDNATOnlyIntoNetworks(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.57.0.0/24")
	b := w.network(t, "b", "10.58.0.0/24")
	_, webAddr := w.container(t, a, "web")
	client, _ := w.container(t, b, "client")
	w.publish(t, portmap.Mapping{Proto: "udp", HostPort: 8095, CtrAddr: webAddr, CtrPort: 80})
	if err := a.Delete(t.Context(), true); err != nil {
		t.Fatal(err)
	}

	// Outside, a machine holds the old container address.
	h, err := w.out.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	held := &netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(webAddr, 32))}
	if err := h.AddrAdd(lo, held); err != nil {
		t.Fatal(err)
	}
	defer h.AddrDel(lo, held)
	rec, err := w.out.NS.ListenPacket("udp4", netip.AddrPortFrom(webAddr, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()

	c, err := client.Dial(t.Context(), &net.Dialer{}, "udp4", netip.AddrPortFrom(b.Config().Subnets[0].Gateway, 8095).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	rec.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, from, err := rec.ReadFrom(make([]byte, 16)); err == nil {
		t.Errorf("a packet for the deleted network's mapping left through the uplink (from %s)", from)
	}
}

// TestLocalnetEndsWithMapping: route_localnet, which a mapping covering
// 127.0.0.1 turns on for the interface towards its container, is turned
// off when the last such mapping goes. Here the container is behind a
// plain veth (no nsnet network), so the table, and the guard that drops
// packets for 127.0.0.0/8 from anywhere but lo, goes with the last
// mapping: a route_localnet left on would let the container reach the
// host's 127.0.0.1 services.
func TestLocalnetEndsWithMapping(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctr := nstest.Container(t, w.host)
	ends, err := veth.Pair(t.Context(), w.host, veth.Config{Name: "vrl0", Up: true, Peer: veth.End{NS: ctr, Name: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	gw, ctrAddr := netip.MustParseAddr("10.59.0.1"), netip.MustParseAddr("10.59.0.2")
	for _, e := range []struct {
		ns   *netns.NS
		name string
		addr netip.Addr
	}{{w.host, ends.Host.Name, gw}, {ctr, "eth0", ctrAddr}} {
		h, err := e.ns.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(e.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(e.addr, 24))}); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if h, err := w.host.Netlink(); err == nil {
			if l, err := h.LinkByName("vrl0"); err == nil {
				h.LinkDel(l)
			}
		}
	})
	nstest.Serve(t, w.host, "tcp", "127.0.0.1:9998")
	m, err := w.mp.Add(t.Context(), portmap.Mapping{HostPort: 8096, CtrAddr: ctrAddr, CtrPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	key := "net/ipv4/conf/vrl0/route_localnet"
	if v, err := w.host.Sysctl(key); err != nil || v != "1" {
		t.Fatalf("route_localnet with the mapping: %q, %v; the test needs it on to mean anything", v, err)
	}
	routeLoopbackVia(t, ctr, "eth0", gw)
	noReach(t, "the host's 127.0.0.1 service from the container, with the mapping", ctr, "tcp", netip.MustParseAddrPort("127.0.0.1:9998"))

	if err := w.mp.Remove(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	if v, err := w.host.Sysctl(key); err != nil || v != "0" {
		t.Errorf("route_localnet after the last mapping's Remove: %q, %v; want 0", v, err)
	}
	noReach(t, "the host's 127.0.0.1 service from the container, after Remove", ctr, "tcp", netip.MustParseAddrPort("127.0.0.1:9998"))
}
