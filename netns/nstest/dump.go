//go:build linux

package nstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// The leak checks read a namespace through two netlink sockets of their
// own and plain dump requests, not through the namespace's netlink handle
// and nftables connection: opening those in a fresh namespace, and
// vishvananda/netlink's full parse of every link (statistics, VF lists),
// cost more than the rest of a sandbox host together. They read only what
// the checks compare: names, aliases, addresses, routes, tables.

// dumper holds a NETLINK_ROUTE and a NETLINK_NETFILTER socket opened in a
// namespace.
type dumper struct {
	route, nf int
	seq       uint32
	buf       []byte
}

func newDumper(ns *netns.NS) (*dumper, error) {
	d := &dumper{route: -1, nf: -1, buf: make([]byte, 64<<10)}
	err := ns.Do(func() (err error) {
		if d.route, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE); err != nil {
			return err
		}
		d.nf, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		d.close()
		return nil, fmt.Errorf("netlink socket in %s: %w", ns, err)
	}
	return d, nil
}

func (d *dumper) close() {
	for _, fd := range []int{d.route, d.nf} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// dump sends a dump request of type typ with body on fd and calls fn with
// the body of each answer, again from the start (up to 10 times) if the
// kernel says the dump was interrupted by a change.
func (d *dumper) dump(fd int, typ uint16, body []byte, reset func(), fn func(data []byte)) error {
	for range 10 {
		reset()
		intr, err := d.dumpOnce(fd, typ, body, fn)
		if err != nil || !intr {
			return err
		}
	}
	return errors.New("netlink dump interrupted 10 times")
}

func (d *dumper) dumpOnce(fd int, typ uint16, body []byte, fn func(data []byte)) (intr bool, err error) {
	d.seq++
	req := make([]byte, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], d.seq)
	copy(req[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, err
	}
	for {
		n, _, err := unix.Recvfrom(fd, d.buf, 0)
		if err != nil {
			return false, err
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return false, err
		}
		for _, m := range msgs {
			if m.Header.Seq != d.seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return intr, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return false, syscall.Errno(errno)
					}
				}
				continue
			}
			fn(m.Data)
		}
	}
}

// attrs calls fn for each netlink attribute in b.
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&0x3fff, b[4:l])
		b = b[min((l+3)&^3, len(b)):]
	}
}

func cstring(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS of linux/rtnetlink.h.
const rtextFilterSkipStats = 1 << 3

// link is a link's name and alias (nsnet marks its links with an alias).
type link struct{ name, alias string }

func (d *dumper) links() ([]link, error) {
	// struct ifinfomsg (16 bytes), then IFLA_EXT_MASK: no statistics.
	body := make([]byte, unix.SizeofIfInfomsg+8)
	binary.NativeEndian.PutUint16(body[16:], 8)
	binary.NativeEndian.PutUint16(body[18:], unix.IFLA_EXT_MASK)
	binary.NativeEndian.PutUint32(body[20:], rtextFilterSkipStats)
	var out []link
	err := d.dump(d.route, unix.RTM_GETLINK, body, func() { out = out[:0] }, func(data []byte) {
		if len(data) < unix.SizeofIfInfomsg {
			return
		}
		var l link
		attrs(data[unix.SizeofIfInfomsg:], func(typ uint16, val []byte) {
			switch typ {
			case unix.IFLA_IFNAME:
				l.name = cstring(val)
			case unix.IFLA_IFALIAS:
				l.alias = cstring(val)
			}
		})
		out = append(out, l)
	})
	return out, err
}

// addrs renders the addresses as "ADDR/BITS", less link-local ones, which
// come and go with their links.
func (d *dumper) addrs() ([]string, error) {
	body := make([]byte, unix.SizeofIfAddrmsg) // family 0: all
	var out []string
	err := d.dump(d.route, unix.RTM_GETADDR, body, func() { out = out[:0] }, func(data []byte) {
		if len(data) < unix.SizeofIfAddrmsg {
			return
		}
		bits := int(data[1])
		var addr, local netip.Addr
		attrs(data[unix.SizeofIfAddrmsg:], func(typ uint16, val []byte) {
			a, _ := netip.AddrFromSlice(val)
			switch typ {
			case unix.IFA_ADDRESS:
				addr = a
			case unix.IFA_LOCAL:
				local = a
			}
		})
		if local.IsValid() {
			addr = local
		}
		if addr.IsValid() && !addr.IsLinkLocalUnicast() {
			out = append(out, netip.PrefixFrom(addr, bits).String())
		}
	})
	return out, err
}

// routes renders the routes of the main table as "DST [via GW] dev INDEX",
// less those to link-local destinations and cached clones.
func (d *dumper) routes() ([]string, error) {
	body := make([]byte, unix.SizeofRtMsg) // family 0: all
	var out []string
	err := d.dump(d.route, unix.RTM_GETROUTE, body, func() { out = out[:0] }, func(data []byte) {
		if len(data) < unix.SizeofRtMsg {
			return
		}
		bits, table := int(data[1]), uint32(data[4])
		if binary.NativeEndian.Uint32(data[8:])&unix.RTM_F_CLONED != 0 {
			return
		}
		var dst, gw netip.Addr
		var oif uint32
		attrs(data[unix.SizeofRtMsg:], func(typ uint16, val []byte) {
			switch typ {
			case unix.RTA_DST:
				dst, _ = netip.AddrFromSlice(val)
			case unix.RTA_GATEWAY:
				gw, _ = netip.AddrFromSlice(val)
			case unix.RTA_OIF:
				if len(val) == 4 {
					oif = binary.NativeEndian.Uint32(val)
				}
			case unix.RTA_TABLE:
				if len(val) == 4 {
					table = binary.NativeEndian.Uint32(val)
				}
			}
		})
		if table != unix.RT_TABLE_MAIN || dst.IsLinkLocalUnicast() {
			return
		}
		r := "default"
		if dst.IsValid() {
			r = netip.PrefixFrom(dst, bits).String()
		} else if data[0] == unix.AF_INET6 {
			r = "default6"
		}
		if gw.IsValid() {
			r += " via " + gw.String()
		}
		out = append(out, fmt.Sprintf("%s dev %d", r, oif))
	})
	return out, err
}

// tables renders the nftables tables as "table FAMILY NAME".
func (d *dumper) tables() ([]string, error) {
	// struct nfgenmsg: family (all), version, resource ID.
	body := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}
	var out []string
	err := d.dump(d.nf, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETTABLE, body, func() { out = out[:0] }, func(data []byte) {
		if len(data) < 4 {
			return
		}
		fam := nftables.TableFamily(data[0])
		attrs(data[4:], func(typ uint16, val []byte) {
			if typ == unix.NFTA_TABLE_NAME {
				out = append(out, fmt.Sprintf("table %s %s", family(fam), cstring(val)))
			}
		})
	})
	return out, err
}
