package dnsd

import (
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// LatencyBuckets are the upper bounds of Stats.Latency's buckets.
var LatencyBuckets = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, time.Second,
}

// Stats are the server's counters since New.
type Stats struct {
	// Queries answered, by question type ("A", "AAAA", "PTR"...; "NONE" for
	// none) and by answer code ("NOERROR", "NXDOMAIN", "REFUSED"...).
	ByType  map[string]uint64
	ByRcode map[string]uint64
	// Forwarded queries (sent to at least one upstream); ForwardTCP of
	// them retried over TCP after a truncated answer; UpstreamErrors:
	// attempts that failed (timeout, refused, SERVFAIL); ForwardFailed:
	// queries no upstream answered; ForwardBusy: queries answered SERVFAIL
	// because MaxForwards were in flight; Mismatched: upstream answers
	// dropped for a wrong ID or question.
	Forwarded, ForwardTCP, UpstreamErrors, ForwardFailed, ForwardBusy, Mismatched uint64
	// Malformed queries; Dropped: messages not answered at all; Truncated
	// UDP answers; TCPRejected: connections closed over MaxTCPConns.
	Malformed, Dropped, Truncated, TCPRejected uint64
	// Latency counts answered queries by time to answer: Latency[i] those
	// within LatencyBuckets[i] (and above the one before), the last one
	// those above all. LatencySum is the total.
	Latency    []uint64
	LatencySum time.Duration
}

type counters struct {
	byType  [257]atomic.Uint64 // index 256: all types above 255
	byRcode [24]atomic.Uint64  // index 23: others
	forwarded, forwardTCP, upstreamErrors, forwardFailed, forwardBusy, mismatched,
	malformed, dropped, truncated, tcpRejected atomic.Uint64
	latency    [9]atomic.Uint64
	latencySum atomic.Int64
}

func (c *counters) observe(qtype uint16, rcode int, d time.Duration) {
	c.byType[min(int(qtype), 256)].Add(1)
	if rcode < 0 || rcode >= len(c.byRcode) {
		rcode = len(c.byRcode) - 1
	}
	c.byRcode[rcode].Add(1)
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	c.latency[i].Add(1)
	c.latencySum.Add(int64(d))
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	if s.usable() != nil {
		return Stats{}
	}
	c := &s.stats
	st := Stats{ByType: map[string]uint64{}, ByRcode: map[string]uint64{},
		Forwarded: c.forwarded.Load(), ForwardTCP: c.forwardTCP.Load(), UpstreamErrors: c.upstreamErrors.Load(),
		ForwardFailed: c.forwardFailed.Load(), ForwardBusy: c.forwardBusy.Load(), Mismatched: c.mismatched.Load(),
		Malformed: c.malformed.Load(), Dropped: c.dropped.Load(), Truncated: c.truncated.Load(), TCPRejected: c.tcpRejected.Load(),
		LatencySum: time.Duration(c.latencySum.Load())}
	for i := range c.byType {
		if v := c.byType[i].Load(); v > 0 {
			name := dns.TypeToString[uint16(i)]
			if i == 0 {
				name = "NONE"
			} else if name == "" || i == 256 {
				name = "OTHER"
			}
			st.ByType[name] += v
		}
	}
	for i := range c.byRcode {
		if v := c.byRcode[i].Load(); v > 0 {
			name := dns.RcodeToString[i]
			if name == "" || i == len(c.byRcode)-1 {
				name = "OTHER"
			}
			st.ByRcode[name] += v
		}
	}
	for i := range c.latency {
		st.Latency = append(st.Latency, c.latency[i].Load())
	}
	return st
}
