package dnsd

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Handle answers one DNS query in wire format from a client whose
// addresses are clients (its source address, or for a container listener
// the container's addresses), received over UDP when udp is true. It
// returns the answer in wire format, or nil when nothing should be sent
// (a message too short to carry an ID, or a response). Handle never
// panics on malformed input; it is exported for embedders with their own
// sockets and for fuzzing.
//
// The caller vouches for clients: Handle does not know the interface a
// query came in on, and answers as for a client on every network whose
// subnets hold one of the addresses.
func (s *Server) Handle(ctx context.Context, query []byte, clients []netip.Addr, udp bool) []byte {
	if s.usable() != nil {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	var out []byte
	s.serve(ctx, query, who{addrs: clients}, udp, func(b []byte) { out = b }, false)
	return out
}

// who is a client as a listener knows it: its addresses and, for a client
// of a ListenHost listener, the interface its query arrived on.
type who struct {
	addrs []netip.Addr // the source address, or a container's addresses
	iface string       // the interface the query arrived on, if check
	// check: the client belongs only to networks on iface (a query from
	// nobody, such as a container listener's over another interface than
	// loopback, has check set and no iface: it belongs to no network).
	check bool
}

// serve answers query through send (not called when nothing is to be
// sent). A query to forward is sent upstream and answered from the
// forwarding loop when async (slow upstreams do not hold up local
// answers), else waited for; at most MaxForwards are in flight and
// MaxClientForwards of one client, past that the answer is SERVFAIL at
// once.
func (s *Server) serve(ctx context.Context, query []byte, w who, udp bool, send func([]byte), async bool) {
	start := time.Now()
	r := s.handle(query, w)
	if r == nil {
		s.stats.dropped.Add(1)
		return
	}
	if r.out != nil {
		s.stats.observe(r.qtype, dns.RcodeSuccess, time.Since(start))
		send(r.out)
		return
	}
	if !r.fwd {
		s.send(r, udp, start, send)
		return
	}
	wire, qend, err := r.wire, r.qend, error(nil)
	if wire == nil {
		wire, qend, err = upstreamQuery(r.req)
	}
	if err != nil {
		r.m.Rcode = dns.RcodeServerFailure
		s.send(r, udp, start, send)
		return
	}
	var key netip.Addr
	if len(w.addrs) > 0 {
		key = w.addrs[0]
	}
	if !s.takeForward(key) {
		s.stats.forwardBusy.Add(1)
		r.m.Rcode = dns.RcodeServerFailure
		s.send(r, udp, start, send)
		return
	}
	finish := func(out []byte) {
		s.releaseForward(key)
		if out != nil {
			s.stats.observe(r.req.Question[0].Qtype, int(out[3]&0xf), time.Since(start))
			send(out)
			return
		}
		r.m.Rcode = dns.RcodeServerFailure
		s.send(r, udp, start, send)
	}
	x := &fwd{ctx: ctx, q: wire, qend: qend, req: r.req, udp: udp, fd: -1}
	if async {
		x.done = finish
		s.startForward(x)
		return
	}
	ch := make(chan []byte, 1)
	x.done = func(b []byte) { ch <- bytes.Clone(b) }
	s.startForward(x)
	var out []byte
	select {
	case out = <-ch:
	case <-ctx.Done():
		s.cancelForward(x)
		out = <-ch
	}
	finish(out)
}

// A fwd is one forwarded query.
type fwd struct {
	ctx  context.Context // ends the query: no more attempts
	q    []byte          // the packed query, its ID rewritten per attempt
	qend int             // the end of its question
	req  *dns.Msg        // the client's query
	udp  bool            // the client asked over UDP
	done func([]byte)    // the answer for the client, or nil

	// Of the attempt in flight, under sockets.mu.
	sent       []byte // the query as sent, with its ID
	up         int    // upstream
	fd         int    // socket, -1 when none is in flight
	deadline   time.Time
	prev, next *fwd // in sockets' list of queries in flight, by deadline
	cancelled  bool
}

// takeForward takes a forward slot for the client key: one of
// MaxForwards, and of the client's MaxClientForwards.
func (s *Server) takeForward(key netip.Addr) bool {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if s.fwdN >= s.cfg.MaxForwards || s.fwdBy[key] >= s.cfg.MaxClientForwards {
		return false
	}
	s.fwdN++
	s.fwdBy[key]++
	return true
}

func (s *Server) releaseForward(key netip.Addr) {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	s.fwdN--
	if s.fwdBy[key]--; s.fwdBy[key] <= 0 {
		delete(s.fwdBy, key)
	}
}

// send packs r, truncated to the client's UDP buffer, counts it and sends
// it.
func (s *Server) send(r *reply, udp bool, start time.Time, send func([]byte)) {
	if udp {
		if size := clientSize(r.req, true); r.m.Len() > size {
			r.m.Truncate(size)
			s.stats.truncated.Add(1)
		}
	}
	out, err := r.m.Pack()
	if err != nil {
		m := new(dns.Msg)
		m.SetRcode(r.m, dns.RcodeServerFailure)
		m.Answer, m.Ns, m.Extra = nil, nil, nil
		if out, err = m.Pack(); err != nil {
			s.stats.dropped.Add(1)
			return
		}
		r.m = m
	}
	qtype := uint16(0)
	if len(r.m.Question) > 0 {
		qtype = r.m.Question[0].Qtype
	}
	s.stats.observe(qtype, r.m.Rcode, time.Since(start))
	send(out)
}

type reply struct {
	req *dns.Msg
	m   *dns.Msg
	fwd bool // to forward

	// A plain query's: the answer ready in wire format (m and req nil)
	// and its question's type; or to forward, the query for upstreams
	// and the end of its question.
	out   []byte
	qtype uint16
	wire  []byte
	qend  int
}

// handle answers a query from the name tables, or says it is to forward.
func (s *Server) handle(query []byte, w who) *reply {
	var low [256]byte
	if q, ok := parseQuick(query, low[:0]); ok {
		if r := s.quickReply(query, q, w); r != nil {
			return r
		}
	}
	return s.handleSlow(query, w)
}

// handleSlow is handle by unpacking the query and packing the answer.
func (s *Server) handleSlow(query []byte, w who) *reply {
	req := new(dns.Msg)
	if err := req.Unpack(query); err != nil {
		s.stats.malformed.Add(1)
		if len(query) < 12 || query[2]&0x80 != 0 { // no header, or a response
			return nil
		}
		m := new(dns.Msg)
		m.Id = uint16(query[0])<<8 | uint16(query[1])
		m.Response = true
		m.Rcode = dns.RcodeFormatError
		return &reply{m: m}
	}
	if req.Response {
		return nil
	}
	r := &reply{req: req, m: new(dns.Msg)}
	r.m.SetReply(req)
	r.m.Compress = true
	if o := req.IsEdns0(); o != nil {
		r.m.SetEdns0(dns.DefaultMsgSize, false)
	}
	if req.Opcode != dns.OpcodeQuery {
		r.m.Rcode = dns.RcodeNotImplemented
		return r
	}
	if len(req.Question) != 1 {
		r.m.Rcode = dns.RcodeFormatError
		return r
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		r.m.Rcode = dns.RcodeRefused
		return r
	}
	name := strings.ToLower(q.Name)

	s.mu.RLock()
	nets := s.clientNets(w)
	if len(nets) == 0 {
		s.mu.RUnlock()
		r.m.Rcode = dns.RcodeRefused // never an open resolver
		return r
	}
	forward := false
	for _, n := range nets {
		if !n.internal {
			forward = true
		}
	}
	// Recursion is available only to clients whose queries may be
	// forwarded.
	r.m.RecursionAvailable = forward
	local := s.isLocal(name)
	found := false
	if a, ok := ptrAddr(name); ok && q.Qtype == dns.TypePTR {
		for _, n := range nets {
			if target, ok := n.ptr[a]; ok {
				found = true
				r.m.Answer = append(r.m.Answer, &dns.PTR{Hdr: s.hdr(q.Name, dns.TypePTR), Ptr: target})
				break
			}
		}
		// An address of any network served here is never forwarded:
		// upstreams cannot know it, and asking would leak it.
		local = slices.ContainsFunc(s.nets, func(n *network) bool {
			return slices.ContainsFunc(n.subnets, func(p netip.Prefix) bool { return p.Contains(a) })
		})
	} else {
		for _, n := range nets {
			if e := n.names[name]; e != nil {
				found = true
				s.answer(r.m, q, e)
				break
			}
		}
	}
	s.mu.RUnlock()
	switch {
	case found:
		r.m.Authoritative = true
		return r
	case local:
		r.m.Authoritative = true
		r.m.Rcode = dns.RcodeNameError
		return r
	case !forward:
		// Internal networks have no egress, and no DNS egress either
		// (CVE-2024-29018).
		r.m.Rcode = dns.RcodeRefused
		return r
	}
	// The query may be forwarded after its buffer was reused: keep only
	// what was copied out of it (the question, the OPT header).
	o := req.IsEdns0()
	req.Answer, req.Ns, req.Extra = nil, nil, nil
	if o != nil {
		req.Extra = []dns.RR{&dns.OPT{Hdr: o.Hdr}}
	}
	r.fwd = true
	return r
}

// answer fills m with the addresses of e of the question's type, rotated.
func (s *Server) answer(m *dns.Msg, q dns.Question, e *entry) {
	addrs := e.addrs
	if len(addrs) == 0 {
		return
	}
	start := int(e.rr.Add(1)-1) % len(addrs)
	for i := range addrs {
		a := addrs[(start+i)%len(addrs)]
		switch {
		case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			m.Answer = append(m.Answer, &dns.A{Hdr: s.hdr(q.Name, dns.TypeA), A: a.AsSlice()})
		case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: s.hdr(q.Name, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
}

// clientNets returns the networks one of whose subnets holds a client
// address, and, when w.check, that are on the interface the query came in
// on. s.mu is held.
func (s *Server) clientNets(w who) []*network {
	var out []*network
	for _, n := range s.nets {
		if w.check && (w.iface == "" || !slices.Contains(n.ifaces, w.iface)) {
			continue
		}
		if slices.ContainsFunc(n.subnets, func(p netip.Prefix) bool {
			return slices.ContainsFunc(w.addrs, func(a netip.Addr) bool { return p.Contains(a.Unmap()) })
		}) {
			out = append(out, n)
		}
	}
	return out
}

// isLocal reports whether name is answered only here: a single label, or
// a name under the domain. (The root, no label, is forwarded.)
func (s *Server) isLocal(name string) bool {
	if dns.CountLabel(name) == 1 {
		return true
	}
	return dns.IsSubDomain(s.cfg.Domain, name)
}

// ptrAddr parses a reverse name of a full address.
func ptrAddr(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa."):
		l := dns.SplitDomainName(strings.TrimSuffix(name, ".in-addr.arpa."))
		if len(l) != 4 {
			return netip.Addr{}, false
		}
		slices.Reverse(l)
		a, err := netip.ParseAddr(strings.Join(l, "."))
		return a, err == nil
	case strings.HasSuffix(name, ".ip6.arpa."):
		l := dns.SplitDomainName(strings.TrimSuffix(name, ".ip6.arpa."))
		if len(l) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, n := range l {
			if len(n) != 1 {
				return netip.Addr{}, false
			}
			v := strings.IndexByte("0123456789abcdef", n[0])
			if v < 0 {
				return netip.Addr{}, false
			}
			j := 31 - i
			if j%2 == 0 {
				b[j/2] |= byte(v) << 4
			} else {
				b[j/2] |= byte(v)
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// upstreamQuery is the query to send upstream for req, packed, and the
// end of its question. Upstreams see no client options (ECS, cookies) of
// ours.
func upstreamQuery(req *dns.Msg) ([]byte, int, error) {
	edns := req.IsEdns0()
	q := &dns.Msg{MsgHdr: req.MsgHdr, Question: req.Question}
	q.SetEdns0(dns.DefaultMsgSize, edns != nil && edns.Do())
	wire, err := q.Pack()
	if err != nil {
		return nil, 0, err
	}
	qend, ok := questionEnd(wire)
	if !ok {
		return nil, 0, errMismatch
	}
	return wire, qend, nil
}

// clientSize is the largest answer the client takes: over UDP 512 bytes,
// or its EDNS size.
func clientSize(req *dns.Msg, udp bool) int {
	if !udp {
		return dns.MaxMsgSize
	}
	size := dns.MinMsgSize
	if req != nil {
		if o := req.IsEdns0(); o != nil && int(o.UDPSize()) > size {
			size = int(o.UDPSize())
		}
	}
	return size
}

// quick is a plain query read without unpacking it.
type quick struct {
	low           []byte // the name in lower case, presentation form
	qtype, qclass uint16
	qend          int // the end of the question
	edns, do      bool
	size          uint16 // EDNS UDP size
}

// parseQuick reads b when it is a plain query: a query (opcode QUERY) of
// one question and, at most, an OPT record without options, nothing
// after them, and a name without compression whose labels hold only
// letters, digits and the punctuation that a name's presentation form
// does not escape; false otherwise (handleSlow reads those). The name is
// appended to low in lower case.
func parseQuick(b []byte, low []byte) (quick, bool) {
	var q quick
	if len(b) < 17 || b[2]&0xf8 != 0 || b[4] != 0 || b[5] != 1 || b[6]|b[7]|b[8]|b[9]|b[10] != 0 || b[11] > 1 {
		return q, false
	}
	off, wire := 12, 0
	for {
		l := int(b[off])
		if l == 0 {
			off++
			break
		}
		if wire += l + 1; l > 63 || wire >= 255 || off+1+l >= len(b) {
			return q, false
		}
		for _, c := range b[off+1 : off+1+l] {
			if c <= ' ' || c > '~' || strings.IndexByte(".'@;()\"\\", c) >= 0 {
				return q, false
			}
			low = append(low, lower(c))
		}
		low = append(low, '.')
		off += 1 + l
	}
	if len(low) == 0 {
		low = append(low, '.')
	}
	if off+4 > len(b) {
		return q, false
	}
	q.low = low
	q.qtype, q.qclass = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:])
	off += 4
	q.qend = off
	if b[11] == 0 {
		return q, off == len(b)
	}
	// The OPT record: the root, its type, the UDP size as class, the
	// extended code (none: miekg/dns would make it the query's), version
	// and flags as TTL, no data.
	if off+11 != len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != dns.TypeOPT || b[off+5] != 0 || b[off+9]|b[off+10] != 0 {
		return q, false
	}
	q.edns, q.size, q.do = true, binary.BigEndian.Uint16(b[off+3:]), b[off+7]&0x80 != 0
	return q, true
}

// quickReply is handle for the plain query b, q, in the two cases that
// a server's clients ask the most: A or AAAA of a name of the client's
// networks (the answer packed here, as handleSlow would pack it), and a
// name to forward (the query for upstreams packed here). It returns nil
// for every other case.
func (s *Server) quickReply(b []byte, q quick, w who) *reply {
	if q.qclass != dns.ClassINET && q.qclass != dns.ClassANY || q.qtype == dns.TypePTR {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	nets := s.clientNets(w)
	if len(nets) == 0 {
		return nil
	}
	forward := slices.ContainsFunc(nets, func(n *network) bool { return !n.internal })
	for _, n := range nets {
		e := n.names[string(q.low)]
		if e == nil {
			continue
		}
		if q.qtype != dns.TypeA && q.qtype != dns.TypeAAAA {
			return nil
		}
		return s.quickAnswer(b, q, e, forward)
	}
	// isLocal without unpacking: the name's labels are plain.
	if dots := bytes.Count(q.low, []byte{'.'}); !forward || dots == 1 && len(q.low) > 1 ||
		bytes.HasSuffix(q.low, []byte(s.cfg.Domain)) && (len(q.low) == len(s.cfg.Domain) || q.low[len(q.low)-len(s.cfg.Domain)-1] == '.') {
		return nil
	}
	// To forward: the query as handleSlow leaves it, the answer to send
	// if that fails, and the query for upstreams.
	req := &dns.Msg{MsgHdr: dns.MsgHdr{Id: binary.BigEndian.Uint16(b), RecursionDesired: b[2]&0x01 != 0,
		Authoritative: b[2]&0x04 != 0, Truncated: b[2]&0x02 != 0, RecursionAvailable: b[3]&0x80 != 0,
		Zero: b[3]&0x40 != 0, AuthenticatedData: b[3]&0x20 != 0, CheckingDisabled: b[3]&0x10 != 0, Rcode: int(b[3] & 0xf)},
		Question: []dns.Question{{Name: presentation(b[12 : q.qend-4]), Qtype: q.qtype, Qclass: q.qclass}}}
	r := &reply{req: req, m: new(dns.Msg), fwd: true}
	r.m.SetReply(req)
	r.m.Compress = true
	if q.edns {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: q.size,
			Ttl: binary.BigEndian.Uint32(b[q.qend+5:])}}
		req.Extra = []dns.RR{o}
		r.m.SetEdns0(dns.DefaultMsgSize, false)
	}
	r.m.RecursionAvailable = true
	// The query for upstreams, as upstreamQuery packs it: the client's
	// header and question, and an OPT record of ours.
	do := byte(0)
	if q.do {
		do = 0x80
	}
	r.wire = make([]byte, 0, q.qend+11)
	r.wire = append(r.wire, b[:11]...)
	r.wire = append(r.wire, 1)
	r.wire = append(r.wire, b[12:q.qend]...)
	r.wire = append(r.wire, 0, 0, byte(dns.TypeOPT), byte(dns.DefaultMsgSize>>8), byte(dns.DefaultMsgSize&0xff), 0, 0, do, 0, 0, 0)
	r.qend = q.qend
	return r
}

// presentation is the wire name w (plain labels, see parseQuick) in
// presentation form, as sent.
func presentation(w []byte) string {
	if len(w) == 1 {
		return "."
	}
	out := make([]byte, 0, len(w))
	for off := 0; w[off] != 0; off += 1 + int(w[off]) {
		out = append(out, w[off+1:off+1+int(w[off])]...)
		out = append(out, '.')
	}
	return string(out)
}

// quickAnswer packs the answer to the plain query b, q, from e, as
// handleSlow and send would (the same bytes), or returns nil when it is
// too large for the client.
func (s *Server) quickAnswer(b []byte, q quick, e *entry, ra bool) *reply {
	addrs := e.addrs
	alen := 4
	if q.qtype == dns.TypeAAAA {
		alen = 16
	}
	n := 0
	for _, a := range addrs {
		if a.BitLen()/8 == alen {
			n++
		}
	}
	size := q.qend + n*(12+alen)
	limit := dns.MinMsgSize
	if q.edns {
		size += 11
		limit = max(limit, int(q.size))
	}
	if size > limit {
		return nil // to truncate: handleSlow
	}
	out := make([]byte, 12, size)
	out[0], out[1] = b[0], b[1]
	out[2] = 0x84 | b[2]&0x01 // QR, AA, RD as asked
	out[3] = b[3] & 0x10      // CD as asked
	if ra {
		out[3] |= 0x80
	}
	out[5] = 1
	out[6], out[7] = byte(n>>8), byte(n)
	out = append(out, b[12:q.qend]...)
	if len(addrs) > 0 {
		start := int(e.rr.Add(1)-1) % len(addrs)
		for i := range addrs {
			if a := addrs[(start+i)%len(addrs)]; a.BitLen()/8 == alen {
				out = append(out, 0xc0, 12, byte(q.qtype>>8), byte(q.qtype), 0, 1)
				out = binary.BigEndian.AppendUint32(out, s.ttl)
				out = binary.BigEndian.AppendUint16(out, uint16(alen))
				out = append(out, a.AsSlice()...)
			}
		}
	}
	if q.edns {
		out[11] = 1
		out = append(out, 0, 0, byte(dns.TypeOPT), byte(dns.DefaultMsgSize>>8), byte(dns.DefaultMsgSize&0xff), 0, 0, 0, 0, 0, 0)
	}
	return &reply{out: out, qtype: q.qtype}
}
