package dnsd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// forward sends req to the upstreams in turn and returns the first answer,
// or nil when none answered.
func (s *Server) forward(ctx context.Context, req *dns.Msg) *dns.Msg {
	if len(s.cfg.Upstreams) == 0 {
		s.stats.forwardFailed.Add(1)
		return nil
	}
	s.stats.forwarded.Add(1)
	q := req.Copy()
	// Upstreams see no client options (ECS, cookies) of ours.
	q.Extra = nil
	q.SetEdns0(dns.DefaultMsgSize, req.IsEdns0() != nil && req.IsEdns0().Do())
	for _, up := range s.cfg.Upstreams {
		m, err := s.exchange(ctx, q, up)
		if err == nil && m.Rcode != dns.RcodeServerFailure && m.Rcode != dns.RcodeRefused {
			if req.IsEdns0() == nil {
				stripOPT(m)
			}
			return m
		}
		if err == nil {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[m.Rcode])
		}
		s.stats.upstreamErrors.Add(1)
		s.log.Debug("dnsd: upstream failed", "upstream", up, "name", q.Question[0].Name, "err", err)
	}
	s.stats.forwardFailed.Add(1)
	return nil
}

func stripOPT(m *dns.Msg) {
	out := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	m.Extra = out
}

// exchange asks one upstream over UDP, then over TCP if the answer was
// truncated. Each attempt has a fresh random ID and a new socket (a fresh
// source port), opened in the host namespace and connected to the
// upstream, so only the upstream can answer; an answer counts only with
// the same ID and question.
func (s *Server) exchange(ctx context.Context, q *dns.Msg, up netip.AddrPort) (*dns.Msg, error) {
	m, err := s.exchangeOne(ctx, q, up, "udp")
	if err == nil && m.Truncated {
		s.stats.forwardTCP.Add(1)
		m, err = s.exchangeOne(ctx, q, up, "tcp")
	}
	return m, err
}

func (s *Server) exchangeOne(ctx context.Context, q *dns.Msg, up netip.AddrPort, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var c net.Conn
	var err error
	if network == "udp" {
		c, err = s.dialUDP(ctx, up)
	} else {
		c, err = s.cfg.NS.Dial(ctx, &net.Dialer{}, network, up.String())
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetDeadline(deadline)
	id := uint16(rand.Uint32())
	q = q.Copy()
	q.Id = id
	out, err := q.Pack()
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		buf := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(buf, uint16(len(out)))
		copy(buf[2:], out)
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
		return match(q, b)
	}
	if _, err := c.Write(out); err != nil {
		return nil, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b := *bp
	for {
		n, err := c.Read(b)
		if err != nil {
			return nil, err
		}
		m, err := match(q, b[:n])
		if err == nil {
			return m, nil
		}
		s.stats.mismatched.Add(1) // spoofed or stale: keep waiting
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

var errMismatch = errors.New("dnsd: answer does not match the query")

func match(q *dns.Msg, b []byte) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, err
	}
	if !m.Response || m.Id != q.Id || len(m.Question) != 1 ||
		m.Question[0].Qtype != q.Question[0].Qtype || m.Question[0].Qclass != q.Question[0].Qclass ||
		!strings.EqualFold(m.Question[0].Name, q.Question[0].Name) {
		return nil, errMismatch
	}
	return m, nil
}

// sockets hands out UDP sockets made in the host namespace ahead of need
// by one goroutine that stays in that namespace, so that a forwarded
// query costs no switch of namespace (a locked thread and two setns per
// query otherwise). Each socket serves one query: connect binds it to a
// fresh random source port, and it is closed after the query.
type sockets struct {
	v4, v6 chan int
	stop   chan struct{}
	done   chan struct{}
}

const socketsAhead = 128

func (s *Server) startSockets() {
	need4 := slices.ContainsFunc(s.cfg.Upstreams, func(u netip.AddrPort) bool { return u.Addr().Unmap().Is4() })
	need6 := slices.ContainsFunc(s.cfg.Upstreams, func(u netip.AddrPort) bool { return !u.Addr().Unmap().Is4() })
	ss := &sockets{stop: make(chan struct{}), done: make(chan struct{})}
	if need4 {
		ss.v4 = make(chan int, socketsAhead)
	}
	if need6 {
		ss.v6 = make(chan int, socketsAhead)
	}
	s.socks = ss
	go func() {
		defer close(ss.done)
		err := s.cfg.NS.Do(func() error {
			p4, p6 := -1, -1
			defer func() {
				for _, fd := range []int{p4, p6} {
					if fd >= 0 {
						unix.Close(fd)
					}
				}
			}()
			for {
				var err error
				if ss.v4 != nil && p4 < 0 {
					p4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				}
				if ss.v6 != nil && p6 < 0 && err == nil {
					p6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				}
				if err != nil { // out of descriptors, say: try again soon
					s.log.Debug("dnsd: upstream socket", "err", err)
					select {
					case <-ss.stop:
						return nil
					case <-time.After(50 * time.Millisecond):
					}
					continue
				}
				c4, c6 := ss.v4, ss.v6
				if p4 < 0 {
					c4 = nil
				}
				if p6 < 0 {
					c6 = nil
				}
				select {
				case c4 <- p4:
					p4 = -1
				case c6 <- p6:
					p6 = -1
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
	for _, ch := range []chan int{ss.v4, ss.v6} {
		for len(ch) > 0 {
			unix.Close(<-ch)
		}
	}
}

// dialUDP returns a UDP socket of the host namespace connected to up.
func (s *Server) dialUDP(ctx context.Context, up netip.AddrPort) (net.Conn, error) {
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
	ch := ss.v6
	if up.Addr().Unmap().Is4() {
		up = netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
		ch = ss.v4
	}
	var fd int
	select {
	case fd = <-ch:
	case <-ss.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: up.Addr().As4(), Port: int(up.Port())}
	if up.Addr().Is6() {
		a := &unix.SockaddrInet6{Addr: up.Addr().As16(), Port: int(up.Port())}
		if z := up.Addr().Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				a.ZoneId = uint32(ifi.Index)
			}
		}
		sa = a
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dnsd-upstream")
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}
