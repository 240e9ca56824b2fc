package dnsd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// startForward sends x to the upstreams in turn, from the host namespace,
// and calls x.done with the first answer (in wire format with the
// client's ID, ready for the client: over UDP no larger than its buffer),
// or with nil when none answered. x.done runs once, on the forwarding
// loop's goroutine or on the caller's, and must not block.
//
// The query is packed once; each attempt only writes a fresh ID into it.
// An answer is relayed as the upstream sent it: only its header and
// question are read to match it, and it is unpacked only when it must be
// truncated for the client or its OPT record taken out (not last).
func (s *Server) startForward(x *fwd) {
	if len(s.cfg.Upstreams) == 0 {
		s.stats.forwardFailed.Add(1)
		x.done(nil)
		return
	}
	s.stats.forwarded.Add(1)
	s.sockMu.Lock()
	if s.socksStopped {
		s.sockMu.Unlock()
		s.stats.forwardFailed.Add(1)
		x.done(nil)
		return
	}
	if s.socks == nil {
		var err error
		if s.socks, err = s.startSockets(); err != nil {
			s.sockMu.Unlock()
			s.log.Error("dnsd: forwarding", "err", err)
			s.stats.forwardFailed.Add(1)
			x.done(nil)
			return
		}
	}
	ss := s.socks
	s.sockMu.Unlock()
	ss.next(x, 0)
}

// cancelForward ends x, a query of startForward, with nil if it is still
// waiting for an upstream's answer (sooner than at its timeout); x.done
// runs once either way.
func (s *Server) cancelForward(x *fwd) {
	s.sockMu.Lock()
	ss := s.socks
	s.sockMu.Unlock()
	if ss == nil {
		return
	}
	ss.mu.Lock()
	x.cancelled = true
	ss.cancels = append(ss.cancels, x)
	ss.mu.Unlock()
	ss.wakeUp()
}

// sockets forwards queries over UDP, with one goroutine (the loop) that
// waits for every upstream's answers at once and one that makes their
// sockets ahead of need, instead of a goroutine waiting per query.
//
// Each attempt takes a UDP socket of its own (a fresh random source
// port), made in the host namespace and connected to the upstream ahead of
// need by one goroutine that stays in that namespace, so that a forwarded
// query costs no switch of namespace (a locked thread and two setns per
// query otherwise). That goroutine also adds the socket to the loop's
// epoll set, level-triggered, and fills the stock again when it is half
// gone, in one go. The query is written by the goroutine that read it
// from the client; the loop reads the answer when epoll says it is there
// and relays it to the client. The loop's epoll descriptor is itself in
// the runtime's poller, so the loop sleeps as any goroutine waiting for a
// socket does, and its read deadline is the first query's timeout
// (queries are listed in the order they were sent, and their timeouts are
// alike).
//
// The sockets the loop is done with are closed by the filling goroutine
// when it wakes, in one go: a close (which takes the socket out of the
// epoll set) is a fifth of a forwarded query's CPU, and on the loop it
// held up the next answers (BenchmarkQuery: 3-15% more queries a second
// without it, by the machine's hour). A descriptor number the loop reads
// after its socket was closed and the number reused is the new socket's,
// so what it reads is matched against the new socket's query, as any
// answer is.
type sockets struct {
	s    *Server
	ep   int      // epoll
	epf  *os.File // ep in the runtime's poller
	raw  syscall.RawConn
	wake int // eventfd in ep: cancels and stop; -1 once closed (under mu)

	free []chan int    // sockets by upstream
	low  chan struct{} // the stock of one upstream is half gone
	stop chan struct{}
	done chan struct{} // the loop and the filler ended

	mu       sync.Mutex
	inflight map[int]*fwd // by socket
	head     fwd          // list of inflight, oldest first
	armed    bool         // epf's read deadline is set
	cancels  []*fwd
	stopped  bool
	retired  []int // sockets done with, for the filler to close
}

// socketsAhead is the stock per upstream. The filler wakes when half of
// it is gone, for 32 closes and 32 new sockets (about 0.4 ms of a core),
// in which the rest of the server has one core fewer on a 2-core machine:
// in BenchmarkQuery, 64 gave a p99 of 1.27-1.36 ms at 29,000-33,000
// forwarded queries a second, 128 a p99 of 1.41-1.76 ms at 30,000-38,000.
const socketsAhead = 64

func (s *Server) startSockets() (*sockets, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so that os.NewFile puts it in the runtime's poller.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)})
	}
	if err != nil {
		if wake > 0 {
			unix.Close(wake)
		}
		unix.Close(ep)
		return nil, err
	}
	epf := os.NewFile(uintptr(ep), "dnsd-epoll")
	raw, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		unix.Close(wake)
		return nil, err
	}
	ss := &sockets{s: s, ep: ep, epf: epf, raw: raw, wake: wake,
		free: make([]chan int, len(s.cfg.Upstreams)),
		low:  make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		inflight: map[int]*fwd{}}
	ss.head.prev, ss.head.next = &ss.head, &ss.head
	for i := range ss.free {
		ss.free[i] = make(chan int, socketsAhead)
	}
	filled := make(chan struct{})
	go ss.fill(filled)
	go func() {
		ss.loop()
		<-filled
		ss.closeRetired()
		for _, ch := range ss.free {
			for len(ch) > 0 {
				unix.Close(<-ch)
			}
		}
		ss.mu.Lock()
		unix.Close(ss.wake)
		ss.wake = -1 // a late cancel must not write to a reused number
		ss.mu.Unlock()
		ss.epf.Close()
		close(ss.done)
	}()
	return ss, nil
}

// fill makes sockets for the stock, in the host namespace.
func (ss *sockets) fill(filled chan struct{}) {
	defer close(filled)
	s := ss.s
	err := s.cfg.NS.Do(func() error {
		for {
			for i, up := range s.cfg.Upstreams {
				up = netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
				for len(ss.free[i]) < cap(ss.free[i]) {
					ss.closeRetired() // first: they count against the descriptor limit
					fd, err := dialUDP(up)
					if err == nil {
						err = unix.EpollCtl(ss.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
						if err != nil {
							unix.Close(fd)
						}
					}
					if err != nil { // out of descriptors, say: try again soon
						s.log.Debug("dnsd: upstream socket", "upstream", up, "err", err)
						select {
						case <-ss.stop:
							return nil
						case <-time.After(50 * time.Millisecond):
						}
						continue
					}
					ss.free[i] <- fd // only this goroutine sends: never blocks
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
}

// closeRetired closes the sockets the loop is done with.
func (ss *sockets) closeRetired() {
	ss.mu.Lock()
	fds := ss.retired
	ss.retired = nil
	ss.mu.Unlock()
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// dialUDP returns a UDP socket of the calling thread's namespace connected
// to up (bound to a random free port), non-blocking.
func dialUDP(up netip.AddrPort) (int, error) {
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
		return -1, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// wakeUp wakes the loop, if it still runs.
func (ss *sockets) wakeUp() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.wake >= 0 {
		unix.Write(ss.wake, one[:])
	}
}

// stopSockets stops the forwarding loop and the goroutine making sockets,
// ends the queries in flight with nil, and closes the sockets.
func (s *Server) stopSockets() {
	s.sockMu.Lock()
	ss := s.socks
	s.socksStopped = true
	s.sockMu.Unlock()
	if ss == nil {
		return
	}
	ss.mu.Lock()
	first := !ss.stopped
	ss.stopped = true
	ss.mu.Unlock()
	if first {
		close(ss.stop)
		ss.wakeUp()
	}
	<-ss.done
}

// next starts the attempt of x at upstream i or the first after it that
// takes the query, or ends x with nil when none is left.
func (ss *sockets) next(x *fwd, i int) {
	s := ss.s
	for ; i < len(s.cfg.Upstreams); i++ {
		err := ss.send(x, i)
		if err == nil {
			return
		}
		if errors.Is(err, errCancelled) {
			break
		}
		s.stats.upstreamErrors.Add(1)
		s.log.Debug("dnsd: upstream failed", "upstream", s.cfg.Upstreams[i], "name", x.req.Question[0].Name, "err", err)
	}
	s.stats.forwardFailed.Add(1)
	x.done(nil)
}

var errCancelled = errors.New("dnsd: forwarding cancelled")

// send writes x to upstream i over a socket of the stock, x being in
// flight from then on, or fails with x not in flight.
func (ss *sockets) send(x *fwd, i int) error {
	if x.ctx.Err() != nil {
		return errCancelled
	}
	ch := ss.free[i]
	var fd int
	select {
	case fd = <-ch:
	case <-ss.stop:
		return errCancelled
	case <-x.ctx.Done():
		return errCancelled
	}
	if len(ch) <= cap(ch)/2 {
		select {
		case ss.low <- struct{}{}:
		default:
		}
	}
	// The first attempt sends x.q; a later one a copy, since the write
	// of an earlier one may not have returned yet.
	q := x.q
	if x.sent != nil {
		q = slices.Clone(x.q)
	}
	binary.BigEndian.PutUint16(q, uint16(rand.Uint32()))
	ss.mu.Lock()
	if x.cancelled || ss.stopped {
		ss.mu.Unlock()
		unix.Close(fd)
		return errCancelled
	}
	x.sent, x.up, x.fd, x.deadline = q, i, fd, time.Now().Add(ss.s.cfg.Timeout)
	ss.inflight[fd] = x
	x.prev, x.next = ss.head.prev, &ss.head
	x.prev.next, ss.head.prev = x, x
	var err error
	if !ss.armed {
		ss.armed = true
		err = ss.epf.SetReadDeadline(x.deadline)
	}
	ss.mu.Unlock()
	if err != nil {
		ss.s.log.Error("dnsd: forwarding timer", "err", err)
	}
	// Registered first: the answer may come before the write returns.
	if _, err := unix.Write(fd, q); err != nil {
		// Nothing was sent, so nothing comes: the loop cannot be
		// reading the socket.
		if ok, _ := ss.take(x, fd); ok {
			unix.Close(fd)
			return err
		}
		return nil // the loop ended it meanwhile (cancelled, stopped)
	}
	return nil
}

// take takes x, in flight on fd, out of flight; false when it was not
// (any more). The caller then owns the socket and the query's end. It
// also says whether x was cancelled.
func (ss *sockets) take(x *fwd, fd int) (ok, cancelled bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if x.fd != fd || ss.inflight[fd] != x {
		return false, x.cancelled
	}
	delete(ss.inflight, fd)
	x.fd = -1
	x.prev.next, x.next.prev = x.next, x.prev
	x.prev, x.next = nil, nil
	return true, x.cancelled
}

// inFlight is a query in flight and its socket.
type inFlight struct {
	x  *fwd
	fd int
}

// loop reads the upstreams' answers, times attempts out and ends the
// cancelled ones, until stopped.
func (ss *sockets) loop() {
	s := ss.s
	events := make([]unix.EpollEvent, 128)
	buf := make([]byte, dns.MaxMsgSize)
	var done []int // sockets done with, for the filler to close
	for {
		n := 0
		err := ss.raw.Read(func(uintptr) bool {
			var err error
			n, err = unix.EpollWait(ss.ep, events, 0)
			return err == nil && n > 0
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			s.log.Error("dnsd: forwarding loop", "err", err)
			ss.end()
			return
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == ss.wake {
				var b [8]byte
				unix.Read(ss.wake, b[:])
				continue
			}
			ss.mu.Lock()
			x := ss.inflight[fd]
			var sent []byte
			if x != nil {
				sent = x.sent[:x.qend]
			}
			ss.mu.Unlock()
			m, err := unix.Read(fd, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if x == nil {
				continue // a socket written to but not yet listed: its answer waits
			}
			if err == nil && !matches(sent, buf[:max(m, 0)]) {
				s.stats.mismatched.Add(1) // spoofed or stale: keep waiting
				continue
			}
			if ok, _ := ss.take(x, fd); !ok {
				continue
			}
			ss.result(x, buf[:max(m, 0)], err)
			done = append(done, fd)
		}
		ss.mu.Lock()
		ss.retired = append(ss.retired, done...)
		done = done[:0]
		stopped := ss.stopped
		var ended []inFlight
		for _, x := range ss.cancels {
			if x.fd >= 0 && ss.inflight[x.fd] == x {
				ended = append(ended, inFlight{x, x.fd})
			}
		}
		ss.cancels = ss.cancels[:0]
		now := time.Now()
		for x := ss.head.next; x != &ss.head && !x.deadline.After(now); x = x.next {
			ended = append(ended, inFlight{x, x.fd})
		}
		ss.mu.Unlock()
		if stopped {
			ss.end()
			return
		}
		for _, e := range ended {
			ok, cancelled := ss.take(e.x, e.fd)
			if !ok {
				continue
			}
			ss.mu.Lock()
			ss.retired = append(ss.retired, e.fd)
			ss.mu.Unlock()
			if cancelled {
				s.stats.forwardFailed.Add(1)
				e.x.done(nil)
			} else {
				ss.result(e.x, nil, os.ErrDeadlineExceeded)
			}
		}
		ss.mu.Lock()
		if ss.head.next == &ss.head {
			if ss.armed {
				ss.armed = false
				ss.epf.SetReadDeadline(time.Time{})
			}
		} else if err != nil { // the deadline passed: the next one
			ss.epf.SetReadDeadline(ss.head.next.deadline)
		}
		ss.mu.Unlock()
	}
}

// end ends the queries in flight with nil: the server is closing.
func (ss *sockets) end() {
	ss.mu.Lock()
	ss.stopped = true
	var ended []inFlight
	for x := ss.head.next; x != &ss.head; x = x.next {
		ended = append(ended, inFlight{x, x.fd})
	}
	ss.mu.Unlock()
	for _, e := range ended {
		if ok, _ := ss.take(e.x, e.fd); ok {
			unix.Close(e.fd)
			ss.s.stats.forwardFailed.Add(1)
			e.x.done(nil)
		}
	}
}

// result goes on from an attempt of x that ended with the answer b or
// err: over TCP when b is truncated, to the next upstream when it failed,
// SERVFAIL or REFUSED, else to the client. b is valid until it returns.
func (ss *sockets) result(x *fwd, b []byte, err error) {
	s := ss.s
	if err == nil && b[2]&0x02 != 0 { // TC: over TCP, on a goroutine of its own
		s.stats.forwardTCP.Add(1)
		up := s.cfg.Upstreams[x.up]
		go func() {
			b, err := s.exchangeTCP(x.ctx, x.q, x.qend, up)
			ss.answer(x, b, err)
		}()
		return
	}
	ss.answer(x, b, err)
}

func (ss *sockets) answer(x *fwd, b []byte, err error) {
	s := ss.s
	if err == nil {
		if rc := b[3] & 0xf; rc == dns.RcodeServerFailure || rc == dns.RcodeRefused {
			err = errors.New("rcode " + dns.RcodeToString[int(rc)])
		}
	}
	if err == nil {
		if b, err = s.relay(b, x.req, x.udp); err == nil {
			x.done(b)
			return
		}
	}
	s.stats.upstreamErrors.Add(1)
	s.log.Debug("dnsd: upstream failed", "upstream", s.cfg.Upstreams[x.up], "name", x.req.Question[0].Name, "err", err)
	if x.up+1 < len(s.cfg.Upstreams) {
		// The next attempt may wait for a socket: not on the loop.
		go ss.next(x, x.up+1)
		return
	}
	s.stats.forwardFailed.Add(1)
	x.done(nil)
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
