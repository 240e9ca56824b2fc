package bridge

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestRPFilter6: IPv6 has no rp_filter sysctl; nsnet's table drops what
// arrives on a bridge from a source routed out of another interface (fib
// saddr . iif oif missing), so a container that forges another network's
// IPv6 address (a real packet, IPV6_TRANSPARENT) reaches nothing on the
// host, while its own address and its link-local address still do.
func TestRPFilter6(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	na := newNet(t, host, alloc, Config{Name: "neta", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("fd00:31:1::/64")}}})
	newNet(t, host, alloc, Config{Name: "netb", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("fd00:31:2::/64")}}})
	ctr, ep := attach(t, na, "c1", EndpointConfig{})
	gw := na.Config().Subnets[0].Gateway
	pc, err := host.ListenPacket("udp", netip.AddrPortFrom(gw, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	// First the forged packets, then a true one on the same path: if a
	// forged one were let in, it would arrive first.
	sendFrom(t, ctr, netip.MustParseAddrPort("[fd00:31:2::9]:4000"), dst, "forged: another network")
	sendFrom(t, ctr, netip.MustParseAddrPort("[fd00:99::9]:4000"), dst, "forged: routed out of no bridge")
	sendFrom(t, ctr, netip.AddrPortFrom(ep.Addrs[0].Addr(), 4000), dst, "true")
	expectOnly(t, pc, "true")

	// Link-local, to the bridge's link-local address.
	lpc, err := host.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lpc.Close()
	brLL := linkLocal(t, host, na.Config().Bridge)
	ctrLL := linkLocal(t, ctr, ep.IfName)
	port := lpc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	sendFrom(t, ctr, netip.AddrPortFrom(ctrLL.WithZone(ep.IfName), 4001), netip.AddrPortFrom(brLL.WithZone(ep.IfName), port), "link-local")
	expectOnly(t, lpc, "link-local")
}

// linkLocal returns the link-local IPv6 address of link in ns.
func linkLocal(t testing.TB, ns *netns.NS, link string) netip.Addr {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	// Wait out duplicate address detection, if any.
	for range 100 {
		as, err := h.AddrList(l, unix.AF_INET6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return ip
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has no link-local address", link)
	return netip.Addr{}
}

// expectOnly reads from pc the one datagram want, and nothing before it.
func expectOnly(t testing.TB, pc net.PacketConn, want string) {
	t.Helper()
	b := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(b)
	if err != nil || string(b[:n]) != want {
		t.Errorf("got %q from %v (%v), want only %q", b[:n], from, err, want)
	}
}

// sendFrom sends msg from ns with source src (forged if it is not ns's),
// IPv4 or IPv6.
func sendFrom(t testing.TB, ns *netns.NS, src, dst netip.AddrPort, msg string) {
	t.Helper()
	err := ns.Do(func() error {
		family, level, opt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_TRANSPARENT
		if src.Addr().Is6() {
			family, level, opt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, sockaddrOf(ns, src)); err != nil {
			return err
		}
		return unix.Sendto(fd, []byte(msg), 0, sockaddrOf(ns, dst))
	})
	if err != nil {
		t.Fatalf("sending %q from %s to %s: %v", msg, src, dst, err)
	}
}

func sockaddrOf(ns *netns.NS, a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	sa := &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
	if z := a.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa
}

// TestPortGuard: a container may send from its own addresses only (issue
// 16): one that forges a neighbour's address on its own network, IPv4,
// IPv6 or in ARP, reaches neither the neighbours nor the host, while its
// true addresses and IPv6 link-local ones do. Detach forgets the port,
// the bridge table goes with the network, and Reconcile of the inet table
// does not lose it.
func TestPortGuard(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "neta", Subnets: []ipam.SubnetConfig{
		{Subnet: netip.MustParsePrefix("172.30.6.0/24")}, {Subnet: netip.MustParsePrefix("fd00:33:1::/64")}}})
	c1, e1 := attach(t, n, "c1", EndpointConfig{})
	_, e2 := attach(t, n, "c2", EndpointConfig{})
	c3, e3 := attach(t, n, "c3", EndpointConfig{})
	v4 := func(e Endpoint) netip.Addr { return e.Addrs[0].Addr() }
	v6 := func(e Endpoint) netip.Addr { return e.Addrs[1].Addr() }
	listen := func(ns *netns.NS, a netip.Addr) (net.PacketConn, netip.AddrPort) {
		pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(a, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc, pc.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	check := func(what string) {
		t.Helper()
		for _, c := range []struct {
			ns             *netns.NS
			dst            netip.Addr
			forged, honest netip.Addr
		}{
			{c3, v4(e3), v4(e2), v4(e1)},
			{c3, v6(e3), v6(e2), v6(e1)},
			{host, n.Config().Subnets[0].Gateway, v4(e2), v4(e1)},
			{host, n.Config().Subnets[1].Gateway, v6(e2), v6(e1)},
		} {
			pc, dst := listen(c.ns, c.dst)
			sendFrom(t, c1, netip.AddrPortFrom(c.forged, 4000), dst, "forged")
			sendFrom(t, c1, netip.AddrPortFrom(c.honest, 4000), dst, "true")
			expectOnly(t, pc, "true")
		}
		// IPv6 link-local, between neighbours.
		ll3 := linkLocal(t, c3, e3.IfName)
		pc, err := c3.ListenPacket("udp", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		port := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		sendFrom(t, c1, netip.AddrPortFrom(linkLocal(t, c1, e1.IfName).WithZone(e1.IfName), 4001),
			netip.AddrPortFrom(ll3.WithZone(e1.IfName), port), "link-local")
		expectOnly(t, pc, "link-local")
		// ARP: a reply that says c2's address is c1's MAC does not reach
		// c3; c1's true one does.
		marker := netip.MustParseAddr("172.30.6.250")
		arps := arpReader(t, c3, e3.IfName)
		sendARP(t, c1, e1, v4(e2), e3.MAC, marker)
		sendARP(t, c1, e1, v4(e1), e3.MAC, marker)
		if got := arps(e1.MAC, marker); got != v4(e1) {
			t.Errorf("%s: c3 got an ARP reply from c1's MAC with sender %s first, want %s", what, got, v4(e1))
		}
	}
	check("attached")
	if !guardTable(t, host) {
		t.Error("no bridge table with guarded ports")
	}

	// The inet table rebuilt from scratch leaves the guard alone.
	if err := nft.Delete(t.Context(), host); err != nil {
		t.Fatal(err)
	}
	if err := nft.Reconcile(t.Context(), host, nft.State{Networks: []nft.Network{{Bridge: n.Config().Bridge, ICC: true,
		Subnets: []netip.Prefix{n.Config().Subnets[0].Subnet, n.Config().Subnets[1].Subnet}}}}); err != nil {
		t.Fatal(err)
	}
	check("after Reconcile")

	// Detach forgets the port; the table goes with the network.
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []Endpoint{e1, e2, e3} {
		l, err := h.LinkByName(e.HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		if !guarded(t, host, l.Attrs().Index) {
			t.Errorf("%s is not guarded", e.HostVeth)
		}
		if err := n.Detach(t.Context(), e.ID); err != nil {
			t.Fatal(err)
		}
		if guarded(t, host, l.Attrs().Index) {
			t.Errorf("%s is still guarded after Detach", e.HostVeth)
		}
	}
	// Again: nothing to forget is no error.
	if err := n.Detach(t.Context(), "c1"); err != nil {
		t.Errorf("Detach again: %v", err)
	}
	if err := n.Delete(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if guardTable(t, host) {
		t.Error("the bridge table outlives the last network")
	}
}

// guarded reports whether nsnet's bridge table has an element of the port
// ifindex.
func guarded(t testing.TB, ns *netns.NS, ifindex int) bool {
	t.Helper()
	found := false
	err := ns.NFTables(func(c *nftables.Conn) error {
		tb := &nftables.Table{Name: nft.TableName, Family: nftables.TableFamilyBridge}
		for _, name := range []string{"ports", "addrs4", "addrs6"} {
			s, err := c.GetSetByName(tb, name)
			if err != nil {
				return err
			}
			elems, err := c.GetSetElements(s)
			if err != nil {
				return err
			}
			for _, e := range elems {
				found = found || len(e.Key) >= 4 && binary.NativeEndian.Uint32(e.Key) == uint32(ifindex)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// guardTable reports whether nsnet's bridge table exists in ns.
func guardTable(t testing.TB, ns *netns.NS) bool {
	t.Helper()
	found := false
	err := ns.NFTables(func(c *nftables.Conn) error {
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
		for _, tb := range ts {
			found = found || tb.Name == nft.TableName
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// sendARP sends from ep (in ns) an ARP reply to the MAC to: "sender is at
// ep's MAC", for the target address target.
func sendARP(t testing.TB, ns *netns.NS, ep Endpoint, sender netip.Addr, to net.HardwareAddr, target netip.Addr) {
	t.Helper()
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ep.IfName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		f := append(append(append([]byte{}, to...), ep.MAC...), 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2)
		f = append(append(f, ep.MAC...), sender.AsSlice()...)
		f = append(append(f, to...), target.AsSlice()...)
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], to)
		return unix.Sendto(fd, f, 0, sa)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// arpReader starts reading the ARP frames that reach link in ns, and
// returns a function that gives the sender address of the first ARP frame
// from the MAC from for the target address target.
func arpReader(t testing.TB, ns *netns.NS, link string) func(from net.HardwareAddr, target netip.Addr) netip.Addr {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		tv := unix.Timeval{Sec: 5}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	return func(from net.HardwareAddr, target netip.Addr) netip.Addr {
		defer unix.Close(fd)
		b := make([]byte, 128)
		for {
			n, _, err := unix.Recvfrom(fd, b, 0)
			if err != nil {
				t.Errorf("reading ARP: %v", err)
				return netip.Addr{}
			}
			// Ethernet (14), then ARP: sha at 8, spa at 14, tpa at 24.
			if n < 14+28 || string(b[14+8:14+14]) != string(from) {
				continue
			}
			if tpa, _ := netip.AddrFromSlice(b[14+24 : 14+28]); tpa != target {
				continue
			}
			spa, _ := netip.AddrFromSlice(b[14+14 : 14+18])
			return spa
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
