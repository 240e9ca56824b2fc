//go:build linux

// Package ctrlinktest captures the announcements a neighbour hears
// (gratuitous ARP, unsolicited neighbour advertisements), for the tests of
// the drivers that send them.
package ctrlinktest

import (
	"bytes"
	"net"
	"net/netip"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

// Capture records the ARP and ICMPv6 neighbour advertisements that
// arrive on one interface (nstest.Sniff).
type Capture struct{ *nstest.Capture }

// Announcement is an address and the MAC a neighbour was told it is at.
type Announcement struct {
	Addr netip.Addr
	MAC  string
}

// Listen starts capturing on interface link of ns.
func Listen(ns *netns.NS, link string) (*Capture, error) {
	c, err := nstest.Sniff(ns, link)
	if err != nil {
		return nil, err
	}
	return &Capture{c}, nil
}

// parse reads a gratuitous ARP (sender address = target address) or an
// unsolicited neighbour advertisement with the override flag and a target
// link-layer address.
func parse(f []byte) (Announcement, bool) {
	if len(f) < 14 {
		return Announcement{}, false
	}
	switch {
	case f[12] == 0x08 && f[13] == 0x06 && len(f) >= 42:
		arp := f[14:]
		spa, tpa := arp[14:18], arp[24:28]
		if !bytes.Equal(spa, tpa) {
			return Announcement{}, false
		}
		ip, _ := netip.AddrFromSlice(spa)
		return Announcement{ip, net.HardwareAddr(arp[8:14]).String()}, true
	case f[12] == 0x86 && f[13] == 0xdd && len(f) >= 14+40+32:
		ip6 := f[14:]
		icmp := ip6[40:]
		if ip6[6] != unix.IPPROTO_ICMPV6 || icmp[0] != 136 || icmp[4]&0x20 == 0 || icmp[24] != 2 {
			return Announcement{}, false
		}
		ip, _ := netip.AddrFromSlice(icmp[8:24])
		return Announcement{ip, net.HardwareAddr(icmp[26:32]).String()}, true
	}
	return Announcement{}, false
}

// Heard reports whether a neighbour was told that addr is at mac, waiting
// up to two seconds for it.
func (c *Capture) Heard(addr netip.Addr, mac net.HardwareAddr) bool {
	want := Announcement{addr, mac.String()}
	return c.Seen(2*time.Second, func(f []byte) bool {
		a, ok := parse(f)
		return ok && a == want
	})
}

// NeighMAC returns the MAC that ns's neighbour table holds for addr, or
// "" if it has no entry.
func NeighMAC(ns *netns.NS, addr netip.Addr) (string, error) {
	h, err := ns.Netlink()
	if err != nil {
		return "", err
	}
	fam := unix.AF_INET
	if addr.Is6() {
		fam = unix.AF_INET6
	}
	neighs, err := h.NeighList(0, fam)
	if err != nil {
		return "", err
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr {
			return n.HardwareAddr.String(), nil
		}
	}
	return "", nil
}
