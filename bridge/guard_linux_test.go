package bridge

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
