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

// TestRPFilter: a bridge has strict reverse-path filtering, so a container
// that forges another network's address (a real packet, IP_TRANSPARENT)
// reaches nothing on the host, while its own address still does.
func TestRPFilter(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	na := newNet(t, host, alloc, Config{Name: "neta", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.30.1.0/24")}}})
	newNet(t, host, alloc, Config{Name: "netb", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.30.2.0/24")}}})
	if v, _ := host.Sysctl("net/ipv4/conf/" + na.Config().Bridge + "/rp_filter"); v != "1" {
		t.Errorf("rp_filter of %s = %q, want 1", na.Config().Bridge, v)
	}
	ctr, ep := attach(t, na, "c1", EndpointConfig{})
	gw := na.Config().Subnets[0].Gateway
	pc, err := host.ListenPacket("udp", netip.AddrPortFrom(gw, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	// First the forged packet, then a true one on the same path: if the
	// forged one were let in, it would arrive first.
	send(t, ctr, netip.AddrPortFrom(netip.MustParseAddr("172.30.2.9"), 4000), dst, "forged")
	send(t, ctr, netip.AddrPortFrom(ep.Addrs[0].Addr(), 4000), dst, "true")
	b := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(b)
	if err != nil || string(b[:n]) != "true" {
		t.Errorf("the host got %q from %v (%v), want only the true packet", b[:n], from, err)
	}
}

// send sends msg from ns with source src (forged if it is not ns's).
func send(t testing.TB, ns *netns.NS, src, dst netip.AddrPort, msg string) {
	t.Helper()
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.Addr().As4(), Port: int(src.Port())}); err != nil {
			return err
		}
		return unix.Sendto(fd, []byte(msg), 0, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
	})
	if err != nil {
		t.Fatal(err)
	}
}
