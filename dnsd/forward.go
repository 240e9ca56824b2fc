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
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
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
	c, err := s.cfg.NS.Dial(ctx, &net.Dialer{}, network, up.String())
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
