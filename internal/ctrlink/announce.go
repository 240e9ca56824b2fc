//go:build linux

package ctrlink

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Announce tells the neighbours of interface idx of ns that its addresses
// are at mac: a gratuitous ARP request for each IPv4 address and an
// unsolicited neighbour advertisement (override set) to all nodes for
// each IPv6 one, so that a neighbour that cached an earlier owner's MAC
// for a reused address takes the new one at once.
//
// The kernel's own (arp_notify, sent when the interface comes up) is not
// seen on the wire: it is sent before the kernel finished bringing the
// link's carrier up (the queue still drops everything) and, for a bridge
// port, before the port forwards. Announce first waits, up to a second,
// for ready (nil: always ready; it may block until it is) and for the
// interface to be operationally up, and sends nothing if they do not come
// (a parent that is down: no one could hear it anyway). Then it waits, up
// to a second as well, until the interface has joined the solicited-node
// group of each IPv6 address, so that the address answers neighbour
// solicitations when Announce returns.
func Announce(ns *netns.NS, idx int, mac net.HardwareAddr, addrs []netip.Prefix, ready func() bool) error {
	if len(addrs) == 0 || len(mac) != 6 {
		return nil
	}
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	// ready first: it may wait for what comes after the interface is up
	// (a bridge port that forwards).
	up := func() bool {
		if ready != nil && !ready() {
			return false
		}
		l, err := h.LinkByIndex(idx)
		return err == nil && l.Attrs().OperState == netlink.OperUp
	}
	for deadline := time.Now().Add(time.Second); !up(); {
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(100 * time.Microsecond)
	}
	var fd int
	err = ns.Do(func() error {
		// An IPv6 address answers neighbour solicitations (multicast to
		// its solicited-node group) only once the interface has joined
		// that group, which the kernel does in a work item (addrconf's
		// DAD work, even for an address without DAD) after the link came
		// up. A macvlan interface drops multicast of groups it has not
		// joined. Until then a neighbour resolving the address gets no
		// answer and tries again only a second later.
		for deadline := time.Now().Add(time.Second); !joined(idx, addrs) && time.Now().Before(deadline); {
			time.Sleep(100 * time.Microsecond)
		}
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return &netns.OpError{Op: "announce", NS: ns.String(), Err: err}
	}
	// Closing an AF_PACKET socket waits for an RCU grace period (10-20
	// ms): no one needs to wait for that.
	defer func() { go unix.Close(fd) }()
	for _, a := range addrs {
		var frame []byte
		var dst [8]byte
		if a.Addr().Is4() {
			frame = garp(mac, a.Addr())
			copy(dst[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		} else {
			frame = unsolicitedNA(mac, a.Addr())
			copy(dst[:], []byte{0x33, 0x33, 0, 0, 0, 1})
		}
		sa := &unix.SockaddrLinklayer{Ifindex: idx, Halen: 6, Addr: dst}
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return &netns.OpError{Op: "announce", NS: ns.String(), Name: a.Addr().String(), Err: err}
		}
	}
	return nil
}

// garp is a gratuitous ARP request for addr, as the kernel's arp_notify
// sends it: broadcast, sender and target address both addr.
func garp(mac net.HardwareAddr, addr netip.Addr) []byte {
	b := make([]byte, 0, 42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, mac...)
	b = append(b, 0x08, 0x06)                // ARP
	b = append(b, 0, 1, 0x08, 0, 6, 4, 0, 1) // Ethernet, IPv4, request
	ip := addr.As4()
	b = append(b, mac...)
	b = append(b, ip[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, ip[:]...)
}

// unsolicitedNA is a neighbour advertisement of addr at mac to all nodes
// (ff02::1), with the override flag and the target link-layer address.
func unsolicitedNA(mac net.HardwareAddr, addr netip.Addr) []byte {
	src := addr.As16()
	dst := netip.MustParseAddr("ff02::1").As16()
	icmp := make([]byte, 32)
	icmp[0] = 136             // neighbour advertisement
	icmp[4] = 0x20            // override
	copy(icmp[8:24], src[:])  // target
	icmp[24], icmp[25] = 2, 1 // target link-layer address, 8 bytes
	copy(icmp[26:32], mac)
	// Checksum over the pseudo-header and the message.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	add(src[:])
	add(dst[:])
	sum += uint32(len(icmp)) + unix.IPPROTO_ICMPV6
	add(icmp)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(icmp[2:], ^uint16(sum))

	b := make([]byte, 0, 14+40+len(icmp))
	b = append(b, 0x33, 0x33, 0, 0, 0, 1)
	b = append(b, mac...)
	b = append(b, 0x86, 0xdd)
	b = append(b, 0x60, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(icmp)))
	b = append(b, unix.IPPROTO_ICMPV6, 255)
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	return append(b, icmp...)
}

// joined reports whether interface idx of the calling thread's namespace
// has joined the solicited-node multicast group of each IPv6 address of
// addrs (ff02::1:ffXX:XXXX, /proc/net/igmp6).
func joined(idx int, addrs []netip.Prefix) bool {
	var want []string
	for _, a := range addrs {
		if a.Addr().Is6() && !a.Addr().Is4In6() {
			b := a.Addr().As16()
			want = append(want, fmt.Sprintf("ff0200000000000000000001ff%02x%02x%02x", b[13], b[14], b[15]))
		}
	}
	if len(want) == 0 {
		return true
	}
	buf, err := os.ReadFile("/proc/thread-self/net/igmp6")
	if err != nil {
		return true // nothing to wait for that can be seen
	}
	for line := range strings.Lines(string(buf)) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == strconv.Itoa(idx) {
			want = slices.DeleteFunc(want, func(g string) bool { return g == f[2] })
		}
	}
	return len(want) == 0
}
