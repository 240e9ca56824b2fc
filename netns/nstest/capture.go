//go:build linux

package nstest

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// Capture records the Ethernet frames that cross one interface of a
// namespace, in both directions, as `tcpdump -i LINK` would: an AF_PACKET
// socket opened in the interface's namespace. Tests use it to see what
// went on the wire (a gratuitous ARP, a packet's source address).
type Capture struct {
	fd     int
	closed atomic.Bool
	done   chan struct{}

	mu     sync.Mutex
	frames [][]byte
}

// Sniff starts capturing on the interface link of ns. Close it.
func Sniff(ns *netns.NS, link string) (*Capture, error) {
	const ethAll = 0x0300 // htons(ETH_P_ALL): also the frames the namespace sends
	c := &Capture{fd: -1, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, ethAll)
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethAll, Ifindex: ifi.Index})
	})
	if err == nil {
		// The read wakes up at least this often to see Close.
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
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if c.closed.Load() {
			return
		}
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		f := make([]byte, n)
		copy(f, buf[:n])
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

// Seen reports whether a frame for which match is true crossed the
// interface, waiting up to wait for one. match gets the whole Ethernet
// frame (destination MAC first) and must not keep it.
func (c *Capture) Seen(wait time.Duration, match func(frame []byte) bool) bool {
	for deadline := time.Now().Add(wait); ; {
		c.mu.Lock()
		for _, f := range c.frames {
			if match(f) {
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
