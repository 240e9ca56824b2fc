package dnsd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// forward sends the query wire (from upstreamQuery) for req to the
// upstreams in turn and returns the first answer, in wire format with
// req's ID, ready for the client (over UDP when udp: no larger than its
// buffer), or nil when none answered.
//
// The query is packed once; each attempt only writes a fresh ID into it.
// An answer is relayed as the upstream sent it: only its header and
// question are read to match it, and it is unpacked only when it must be
// truncated for the client or its OPT record taken out (not last).
func (s *Server) forward(ctx context.Context, req *dns.Msg, wire []byte, qend int, udp bool) []byte {
	if len(s.cfg.Upstreams) == 0 {
		s.stats.forwardFailed.Add(1)
		return nil
	}
	s.stats.forwarded.Add(1)
	for i, up := range s.cfg.Upstreams {
		b, err := s.exchange(ctx, wire, qend, i)
		if err == nil {
			if rc := b[3] & 0xf; rc == dns.RcodeServerFailure || rc == dns.RcodeRefused {
				err = fmt.Errorf("rcode %s", dns.RcodeToString[int(rc)])
			}
		}
		if err == nil {
			if b, err = s.relay(b, req, udp); err == nil {
				return b
			}
		}
		s.stats.upstreamErrors.Add(1)
		s.log.Debug("dnsd: upstream failed", "upstream", up, "name", req.Question[0].Name, "err", err)
	}
	s.stats.forwardFailed.Add(1)
	return nil
}

// exchange asks upstream i over UDP, then over TCP if the answer was
// truncated. q is the packed query, its question ending at qend. Each
// attempt has a fresh random ID and its own socket (a fresh source port),
// of the host namespace and connected to the upstream, so only the
// upstream can answer; an answer counts only with the same ID and
// question. It returns the answer.
func (s *Server) exchange(ctx context.Context, q []byte, qend int, i int) ([]byte, error) {
	b, err := s.exchangeUDP(ctx, q, qend, i)
	if err == nil && b[2]&0x02 != 0 { // TC
		s.stats.forwardTCP.Add(1)
		b, err = s.exchangeTCP(ctx, q, qend, s.cfg.Upstreams[i])
	}
	return b, err
}

func (s *Server) exchangeUDP(ctx context.Context, q []byte, qend int, i int) ([]byte, error) {
	c, err := s.upstreamConn(ctx, i)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(s.cfg.Timeout))
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
		defer stop()
	}
	binary.BigEndian.PutUint16(q, uint16(rand.Uint32()))
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := c.Read(buf)
		if err != nil && err != io.EOF { // EOF: an empty datagram
			return nil, err
		}
		if matches(q[:qend], buf[:n]) {
			return append([]byte(nil), buf[:n]...), nil
		}
		s.stats.mismatched.Add(1) // spoofed or stale: keep waiting
	}
}

func (s *Server) exchangeTCP(ctx context.Context, q []byte, qend int, up netip.AddrPort) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	c, err := s.cfg.NS.Dial(ctx, &net.Dialer{}, "tcp", up.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	buf := make([]byte, 2+len(q))
	binary.BigEndian.PutUint16(buf, uint16(len(q)))
	copy(buf[2:], q)
	binary.BigEndian.PutUint16(buf[2:], uint16(rand.Uint32()))
	if _, err := c.Write(buf); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	if !matches(buf[2:2+qend], b) {
		s.stats.mismatched.Add(1)
		return nil, errMismatch
	}
	return b, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// sockets hands out UDP sockets made in the host namespace ahead of need,
// each connected to one upstream, by one goroutine that stays in that
// namespace, so that a forwarded query costs no switch of namespace (a
// locked thread and two setns per query otherwise) and no system call
// but its write, read and close. Each socket serves one query: it was
// bound to a fresh random source port when connected, and it is closed
// after the query. The goroutine fills the stock again when it is half
// gone, in one go.
type sockets struct {
	free []chan *os.File // by upstream
	low  chan struct{}   // the stock of one upstream is half gone
	stop chan struct{}
	done chan struct{}
}

const socketsAhead = 64 // per upstream

func (s *Server) startSockets() {
	ss := &sockets{free: make([]chan *os.File, len(s.cfg.Upstreams)),
		low: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	for i := range ss.free {
		ss.free[i] = make(chan *os.File, socketsAhead)
	}
	s.socks = ss
	go func() {
		defer close(ss.done)
		err := s.cfg.NS.Do(func() error {
			for {
				for i, up := range s.cfg.Upstreams {
					up = netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
					for len(ss.free[i]) < cap(ss.free[i]) {
						c, err := dialUDP(up)
						if err != nil { // out of descriptors, say: try again soon
							s.log.Debug("dnsd: upstream socket", "upstream", up, "err", err)
							select {
							case <-ss.stop:
								return nil
							case <-time.After(50 * time.Millisecond):
							}
							continue
						}
						ss.free[i] <- c // only this goroutine sends: never blocks
					}
				}
				select {
				case <-ss.low:
				case <-ss.stop:
					return nil
				}
			}
		})
		if err != nil {
			s.log.Error("dnsd: upstream sockets", "err", err)
		}
	}()
}

// dialUDP returns a UDP socket of the calling thread's namespace connected
// to up: a bare descriptor in the runtime's poller, not a net.Conn, which
// would cost three more system calls (a socket option, its two
// addresses).
func dialUDP(up netip.AddrPort) (*os.File, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: up.Addr().As4(), Port: int(up.Port())}
	if up.Addr().Is6() {
		family = unix.AF_INET6
		a := &unix.SockaddrInet6{Addr: up.Addr().As16(), Port: int(up.Port())}
		if z := up.Addr().Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				a.ZoneId = uint32(ifi.Index)
			}
		}
		sa = a
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "dnsd-upstream"), nil
}

// stopSockets stops the goroutine and closes the sockets made ahead.
func (s *Server) stopSockets() {
	s.sockMu.Lock()
	ss := s.socks
	s.socksStopped = true
	s.sockMu.Unlock()
	if ss == nil {
		return
	}
	select {
	case <-ss.stop:
		return
	default:
	}
	close(ss.stop)
	<-ss.done
	for _, ch := range ss.free {
		for len(ch) > 0 {
			(<-ch).Close()
		}
	}
}

// upstreamConn returns a UDP socket of the host namespace connected to
// upstream i.
func (s *Server) upstreamConn(ctx context.Context, i int) (*os.File, error) {
	s.sockMu.Lock()
	if s.socksStopped {
		s.sockMu.Unlock()
		return nil, ErrClosed
	}
	if s.socks == nil {
		s.startSockets()
	}
	ss := s.socks
	s.sockMu.Unlock()
	ch := ss.free[i]
	var c *os.File
	select {
	case c = <-ch:
	case <-ss.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if len(ch) <= cap(ch)/2 {
		select {
		case ss.low <- struct{}{}:
		default:
		}
	}
	return c, nil
}
