//go:build linux

package check

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// Capture records the IPv4 packets that cross one interface, as a
// `tcpdump -i LINK` would: an AF_PACKET socket opened in the interface's
// namespace.
type Capture struct {
	fd     int
	closed atomic.Bool
	done   chan struct{}

	mu   sync.Mutex
	pkts []Packet
}

// Packet is the addresses of one captured IPv4 packet.
type Packet struct{ Src, Dst netip.Addr }

// Listen starts capturing on the interface link of ns.
func Listen(ns *netns.NS, link string) (*Capture, error) {
	// ETH_P_ALL (in network order): only such sockets see the packets the
	// host sends, besides those it receives.
	const ethAll = 0x0300
	c := &Capture{fd: -1, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, ethAll)
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethAll, Ifindex: ifi.Index})
	})
	if err == nil {
		// The read below wakes up at least this often to see Close.
		err = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	}
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, err
	}
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if c.closed.Load() {
			return
		}
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Protocol != 0x0008 || n < 20 { // htons(ETH_P_IP)
			continue
		}
		src, _ := netip.AddrFromSlice(buf[12:16])
		dst, _ := netip.AddrFromSlice(buf[16:20])
		c.mu.Lock()
		c.pkts = append(c.pkts, Packet{src, dst})
		c.mu.Unlock()
	}
}

// Saw reports whether a packet from src to dst crossed the interface,
// waiting up to a second for it.
func (c *Capture) Saw(src, dst netip.Addr) bool {
	for deadline := time.Now().Add(time.Second); ; {
		c.mu.Lock()
		for _, p := range c.pkts {
			if p.Src == src && p.Dst == dst {
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close stops the capture.
func (c *Capture) Close() {
	if !c.closed.Swap(true) {
		<-c.done
		unix.Close(c.fd)
	}
}
