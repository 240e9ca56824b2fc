//go:build linux

package check

import (
	"net/netip"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// Capture records the IPv4 packets that cross one interface, as
// `tcpdump -i LINK` would (nstest.Sniff).
type Capture struct{ *nstest.Capture }

// Listen starts capturing on the interface link of ns.
func Listen(ns *netns.NS, link string) (*Capture, error) {
	c, err := nstest.Sniff(ns, link)
	if err != nil {
		return nil, err
	}
	return &Capture{c}, nil
}

// Saw reports whether a packet from src to dst crossed the interface,
// waiting up to a second for it.
func (c *Capture) Saw(src, dst netip.Addr) bool {
	return c.Seen(time.Second, func(f []byte) bool {
		if len(f) < 14+20 || f[12] != 0x08 || f[13] != 0x00 { // IPv4
			return false
		}
		s, _ := netip.AddrFromSlice(f[14+12 : 14+16])
		d, _ := netip.AddrFromSlice(f[14+16 : 14+20])
		return s == src && d == dst
	})
}
