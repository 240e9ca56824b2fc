// Package ipnet converts between net/netip, which nsnet's API uses, and the
// net types that the netlink libraries take.
package ipnet

import (
	"net"
	"net/netip"
)

// From returns p as a *net.IPNet with p's address (not masked): the form
// netlink.Addr takes for an address with its prefix length.
func From(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Last returns the last address of p (its broadcast address, for IPv4).
func Last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
