package portmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink, from linux/netfilter/nfnetlink_conntrack.h.
const (
	ctGet    = unix.NFNL_SUBSYS_CTNETLINK<<8 | 1 // IPCTNL_MSG_CT_GET
	ctDelete = unix.NFNL_SUBSYS_CTNETLINK<<8 | 2 // IPCTNL_MSG_CT_DELETE

	ctaTupleOrig  = 1  // CTA_TUPLE_ORIG
	ctaTupleReply = 2  // CTA_TUPLE_REPLY
	ctaID         = 12 // CTA_ID
	ctaZone       = 18 // CTA_ZONE
	ctaFilter     = 25 // CTA_FILTER (Linux 5.10)

	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO
	ctaIPv4Src    = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst    = 2 // CTA_IP_V4_DST
	ctaIPv6Src    = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst    = 4 // CTA_IP_V6_DST
	ctaProtoNum   = 1 // CTA_PROTO_NUM
	ctaProtoSPort = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDPort = 3 // CTA_PROTO_DST_PORT

	ctaFilterOrigFlags  = 1 // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags = 2 // CTA_FILTER_REPLY_FLAGS

	filterIPSrc     = 1 << 0 // CTA_FILTER_FLAG_CTA_IP_SRC
	filterIPDst     = 1 << 1 // CTA_FILTER_FLAG_CTA_IP_DST
	filterProtoNum  = 1 << 3 // CTA_FILTER_FLAG_CTA_PROTO_NUM
	filterProtoSPrt = 1 << 4 // CTA_FILTER_FLAG_CTA_PROTO_SRC_PORT
	filterProtoDPrt = 1 << 5 // CTA_FILTER_FLAG_CTA_PROTO_DST_PORT

	// ctDeleteChunk is how many deletions go in one sendmsg: their
	// acknowledgements must fit the socket's receive buffer.
	ctDeleteChunk = 64
	// ctFlushMost is how many filters ctForget gives the kernel one by
	// one; with more, it reads the protocol's entries once.
	ctFlushMost = 16
)

type ctSocket = netlink.Conn

// ctFilter selects conntrack entries exactly: the family and protocol,
// the original destination port, and the original destination address
// and the reply's source (where a DNAT sent the entry) where they are
// valid.
type ctFilter struct {
	v6    bool
	proto uint8
	dst   netip.Addr // original destination; the zero Addr: any
	port  uint16     // original destination port
	ctr   netip.AddrPort
}

func (f ctFilter) match(e ctEntry) bool {
	return e.v6 == f.v6 && e.proto == f.proto && e.port == f.port &&
		(!f.dst.IsValid() || e.dst == f.dst) && (!f.ctr.IsValid() || e.replySrc == f.ctr)
}

// ctEntry is a dumped entry: where it was going, where its replies come
// from, and the attributes that name it exactly for its deletion (its
// original tuple, zone and ID).
type ctEntry struct {
	v6       bool
	proto    uint8
	dst      netip.Addr
	port     uint16
	replySrc netip.AddrPort
	name     []netlink.Attribute
}

func nfgen(v6 bool) []byte {
	if v6 {
		return []byte{unix.AF_INET6, unix.NFNETLINK_V0, 0, 0}
	}
	return []byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}
}

// tuple encodes the fields of a tuple that a filter compares.
func tuple(ae *netlink.AttributeEncoder, typ uint16, v6 bool, proto uint8, ipAttr uint16, ip netip.Addr, portAttr, port uint16) {
	ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
		if ip.IsValid() {
			if v6 {
				ipAttr++ // CTA_IP_V6_* follow CTA_IP_V4_*
			}
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(ipAttr, ip.AsSlice())
				return nil
			})
		}
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, proto)
			if port != 0 {
				ae.Bytes(portAttr, binary.BigEndian.AppendUint16(nil, port))
			}
			return nil
		})
		return nil
	})
}

// message is a request of typ for the entries f selects: a delete
// without a full tuple but with CTA_FILTER is a filtered flush (Linux
// 6.12), a dump with it a filtered dump (5.10). Port 0 (for the dump of a
// whole protocol) compares no port.
func (f ctFilter) message(typ netlink.HeaderType, flags netlink.HeaderFlags) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	orig := uint32(filterProtoNum)
	if f.dst.IsValid() {
		orig |= filterIPDst
	}
	if f.port != 0 {
		orig |= filterProtoDPrt
	}
	tuple(ae, ctaTupleOrig, f.v6, f.proto, ctaIPv4Dst, f.dst, ctaProtoDPort, f.port)
	if f.ctr.IsValid() {
		tuple(ae, ctaTupleReply, f.v6, f.proto, ctaIPv4Src, f.ctr.Addr(), ctaProtoSPort, f.ctr.Port())
	}
	ae.Nested(ctaFilter, func(ae *netlink.AttributeEncoder) error {
		ae.Uint32(ctaFilterOrigFlags, orig) // host byte order (NLA_U32)
		if f.ctr.IsValid() {
			ae.Uint32(ctaFilterReplyFlags, filterIPSrc|filterProtoNum|filterProtoSPrt)
		}
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{Header: netlink.Header{Type: typ, Flags: flags}, Data: append(nfgen(f.v6), attrs...)}, nil
}

const attrTypeMask = ^uint16(netlink.Nested | netlink.NetByteOrder)

// parseEntry reads a dumped entry.
func parseEntry(m netlink.Message) (ctEntry, error) {
	var e ctEntry
	if len(m.Data) < 4 {
		return e, fmt.Errorf("conntrack entry of %d bytes", len(m.Data))
	}
	e.v6 = m.Data[0] == unix.AF_INET6
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		return e, err
	}
	for _, a := range attrs {
		switch a.Type & attrTypeMask {
		case ctaTupleOrig:
			e.name = append(e.name, a)
			var src netip.AddrPort
			if err := e.parseTuple(a.Data, &src, &e.dst, &e.port); err != nil {
				return e, err
			}
		case ctaTupleReply:
			var dst netip.Addr
			var dport uint16
			if err := e.parseTuple(a.Data, &e.replySrc, &dst, &dport); err != nil {
				return e, err
			}
		case ctaZone, ctaID:
			e.name = append(e.name, a)
		}
	}
	if !e.dst.IsValid() {
		return e, errors.New("conntrack entry without its original destination")
	}
	return e, nil
}

func (e *ctEntry) parseTuple(b []byte, src *netip.AddrPort, dst *netip.Addr, dport *uint16) error {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return err
	}
	var srcIP netip.Addr
	var sport uint16
	for _, a := range attrs {
		inner, err := netlink.UnmarshalAttributes(a.Data)
		if err != nil {
			return err
		}
		for _, i := range inner {
			t := i.Type & attrTypeMask
			switch a.Type & attrTypeMask {
			case ctaTupleIP:
				ip, _ := netip.AddrFromSlice(i.Data)
				switch t {
				case ctaIPv4Src, ctaIPv6Src:
					srcIP = ip
				case ctaIPv4Dst, ctaIPv6Dst:
					*dst = ip
				}
			case ctaTupleProto:
				switch {
				case t == ctaProtoNum && len(i.Data) == 1:
					e.proto = i.Data[0]
				case t == ctaProtoSPort && len(i.Data) == 2:
					sport = binary.BigEndian.Uint16(i.Data)
				case t == ctaProtoDPort && len(i.Data) == 2:
					*dport = binary.BigEndian.Uint16(i.Data)
				}
			}
		}
	}
	*src = netip.AddrPortFrom(srcIP, sport)
	return nil
}

// ctForget deletes the entries of host's conntrack table that the filters
// select, and no other. The kernel does the selecting: with a few filters,
// each is one flush with CTA_FILTER, which walks the kernel's table and
// copies nothing out (0.25 ms with few entries); with more, or on a
// kernel older than 6.12, one dump per family and protocol, filtered by
// the kernel to that protocol's entries, whose matches are then deleted
// one by one by their exact tuple, zone and ID.
func (mp *Mapper) ctForget(fs []ctFilter) error {
	if len(fs) == 0 {
		return nil
	}
	c, err := mp.ctConn()
	if err != nil {
		return err
	}
	if len(fs) <= ctFlushMost && !mp.ctNoFlush {
		err := ctFlush(c, fs)
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
			if err != nil {
				mp.ctClose()
				return fmt.Errorf("portmap: delete conntrack entries: %w", err)
			}
			return nil
		}
		// A kernel without filtered flushes (before 6.12) finds the
		// partial tuple invalid, and deletes nothing.
		mp.ctNoFlush = true
	}
	if err := ctDumpDelete(c, fs); err != nil {
		mp.ctClose()
		return fmt.Errorf("portmap: delete conntrack entries: %w", err)
	}
	return nil
}

// ctFlush sends one filtered flush per filter, in one sendmsg, and reads
// their acknowledgements.
func ctFlush(c *netlink.Conn, fs []ctFilter) error {
	msgs := make([]netlink.Message, len(fs))
	for i, f := range fs {
		var err error
		if msgs[i], err = f.message(ctDelete, netlink.Request|netlink.Acknowledge); err != nil {
			return err
		}
	}
	return ctSend(c, msgs)
}

// ctDumpDelete dumps the entries of each family and protocol of fs (and
// port, where they have one) and deletes those that a filter selects.
func ctDumpDelete(c *netlink.Conn, fs []ctFilter) error {
	type famProto struct {
		v6    bool
		proto uint8
	}
	byFP := map[famProto][]ctFilter{}
	for _, f := range fs {
		k := famProto{f.v6, f.proto}
		byFP[k] = append(byFP[k], f)
	}
	var del []netlink.Message
	for k, fs := range byFP {
		q := ctFilter{v6: k.v6, proto: k.proto, port: fs[0].port}
		if slices.ContainsFunc(fs, func(f ctFilter) bool { return f.port != q.port }) {
			q.port = 0 // the kernel compares one port: take the protocol's entries
		}
		req, err := q.message(ctGet, netlink.Request|netlink.Dump)
		if err != nil {
			return err
		}
		msgs, err := c.Execute(req)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			e, err := parseEntry(m)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(fs, func(f ctFilter) bool { return f.match(e) }) {
				continue
			}
			data, err := netlink.MarshalAttributes(e.name)
			if err != nil {
				return err
			}
			del = append(del, netlink.Message{
				Header: netlink.Header{Type: ctDelete, Flags: netlink.Request | netlink.Acknowledge},
				Data:   append(nfgen(e.v6), data...),
			})
		}
	}
	return ctSend(c, del)
}

// ctSend sends msgs in chunks, each in one sendmsg, which the kernel
// handles before it returns, and reads their acknowledgements. An entry
// that went meanwhile (ENOENT) is no error.
func ctSend(c *netlink.Conn, msgs []netlink.Message) error {
	for len(msgs) > 0 {
		n := min(len(msgs), ctDeleteChunk)
		if _, err := c.SendMessages(msgs[:n]); err != nil {
			return err
		}
		var errs []error
		for acked := 0; acked < n; {
			got, err := c.Receive()
			if err != nil {
				acked++
				if !errors.Is(err, unix.ENOENT) {
					errs = append(errs, err)
				}
				continue
			}
			acked += len(got)
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// ctConn returns the Mapper's ctnetlink socket, opened in the host
// namespace on first use. Call with mp.mu held.
func (mp *Mapper) ctConn() (*netlink.Conn, error) {
	if mp.ct != nil {
		return mp.ct, nil
	}
	err := mp.host.Do(func() error {
		var err error
		mp.ct, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("portmap: conntrack socket: %w", err)
	}
	return mp.ct, nil
}

// ctClose closes the socket (after an error, it may hold stray replies).
// Call with mp.mu held.
func (mp *Mapper) ctClose() {
	if mp.ct != nil {
		mp.ct.Close()
		mp.ct = nil
	}
}
