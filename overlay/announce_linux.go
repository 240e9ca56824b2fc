package overlay

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// announce sends a gratuitous ARP for addr at mac into the network's
// bridge on this host. A local container that asked for addr before the
// control plane had programmed it got no answer (the VXLAN device's proxy
// answers only what it knows) and would ask again only a second later;
// the announcement completes its pending entry now. h.mu is held.
func (h *Host) announce(bridgeIndex int, addr netip.Addr, mac net.HardwareAddr) error {
	if !addr.Is4() || len(mac) != 6 {
		return nil // IPv6 neighbours ask again sooner (and by other means)
	}
	if h.arpFD < 0 {
		err := h.cfg.NS.Do(func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			h.arpFD = fd
			return err
		})
		if err != nil {
			h.arpFD = -1
			return err
		}
	}
	// ARP request, sender = target = addr (gratuitous), from mac.
	pkt := make([]byte, 0, 28)
	pkt = binary.BigEndian.AppendUint16(pkt, 1)      // Ethernet
	pkt = binary.BigEndian.AppendUint16(pkt, 0x0800) // IPv4
	pkt = append(pkt, 6, 4)
	pkt = binary.BigEndian.AppendUint16(pkt, 1) // request
	pkt = append(pkt, mac...)
	pkt = append(pkt, addr.AsSlice()...)
	pkt = append(pkt, 0, 0, 0, 0, 0, 0)
	pkt = append(pkt, addr.AsSlice()...)
	to := &unix.SockaddrLinklayer{Protocol: 0x0608, Ifindex: bridgeIndex, Halen: 6, // htons(ETH_P_ARP)
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return unix.Sendto(h.arpFD, pkt, 0, to)
}
