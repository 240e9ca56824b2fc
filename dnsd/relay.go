package dnsd

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// relay makes an upstream's answer b the client's: req's ID, no OPT record
// if req had none, truncated to the client's UDP buffer.
func (s *Server) relay(b []byte, req *dns.Msg, udp bool) ([]byte, error) {
	binary.BigEndian.PutUint16(b, req.Id)
	size := clientSize(req, udp)
	if req.IsEdns0() == nil {
		var ok bool
		if b, ok = cutLastOPT(b); !ok {
			return s.relaySlow(b, req, size)
		}
	}
	if len(b) > size {
		return s.relaySlow(b, req, size)
	}
	return b, nil
}

// relaySlow is relay by unpacking and packing again.
func (s *Server) relaySlow(b []byte, req *dns.Msg, size int) ([]byte, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, err
	}
	if req.IsEdns0() == nil {
		out := m.Extra[:0]
		for _, rr := range m.Extra {
			if rr.Header().Rrtype != dns.TypeOPT {
				out = append(out, rr)
			}
		}
		m.Extra = out
	}
	m.Compress = true
	if m.Len() > size {
		m.Truncate(size)
		s.stats.truncated.Add(1)
	}
	return m.Pack()
}

// questionEnd returns the end of the one question of the message b.
func questionEnd(b []byte) (int, bool) {
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) != 1 {
		return 0, false
	}
	off, ok := skipName(b, 12)
	if !ok || off+4 > len(b) {
		return 0, false
	}
	return off + 4, true
}

// matches reports whether b answers the query q (its header and question,
// as sent): a response with q's ID and the same question (the name's
// letters in any case).
func matches(q, b []byte) bool {
	if len(b) < len(q) || b[2]&0x80 == 0 || b[0] != q[0] || b[1] != q[1] || b[4] != 0 || b[5] != 1 {
		return false
	}
	name := len(q) - 4
	for i := 12; i < len(q); i++ {
		x, y := q[i], b[i]
		if x != y && (i >= name || lower(x) != lower(y)) {
			return false
		}
	}
	return true
}

var errMismatch = errors.New("dnsd: answer does not match the query")

// cutLastOPT removes the OPT record of the message b when it is the last
// record (nothing after it can point into it). It reports false when b has
// an OPT record elsewhere, or cannot be read.
func cutLastOPT(b []byte) ([]byte, bool) {
	if len(b) < 12 {
		return b, false
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	rrs := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	off := 12
	var ok bool
	for range qd {
		if off, ok = skipName(b, off); !ok || off+4 > len(b) {
			return b, false
		}
		off += 4
	}
	for i := range rrs {
		start := off
		if off, ok = skipName(b, off); !ok || off+10 > len(b) {
			return b, false
		}
		typ := binary.BigEndian.Uint16(b[off:])
		off += 10 + int(binary.BigEndian.Uint16(b[off+8:]))
		if off > len(b) {
			return b, false
		}
		if typ == dns.TypeOPT {
			if i != rrs-1 || off != len(b) {
				return b, false
			}
			binary.BigEndian.PutUint16(b[10:], binary.BigEndian.Uint16(b[10:])-1)
			return b[:start], true
		}
	}
	return b, off == len(b)
}

// skipName returns the offset after the (possibly compressed) name at off
// in b.
func skipName(b []byte, off int) (int, bool) {
	for off < len(b) {
		switch l := int(b[off]); {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0:
			return off + 2, off+2 <= len(b)
		case l&0xc0 != 0:
			return 0, false
		default:
			off += 1 + l
		}
	}
	return 0, false
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
