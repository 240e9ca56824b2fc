package bridge

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// setNoSTP turns STP off and the forward delay to 0 on the bridge with
// index, like `ip link set BR type bridge stp_state 0 forward_delay 0`:
// ports forward as soon as they are up. vishvananda/netlink's Bridge has no
// field for these, so the request is built here and sent from inside host
// (NS.Do opens the socket there).
func setNoSTP(host *netns.NS, index int) error {
	return host.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(0))
		data.AddRtAttr(nl.IFLA_BR_FORWARD_DELAY, nl.Uint32Attr(0))
		req.AddData(info)
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

// portForwarding reports whether the bridge port with index forwards (its
// STP state, IFLA_BRPORT_STATE, is forwarding), like `ip -d link show`
// shows it. vishvananda/netlink does not parse a bridge port's data.
func portForwarding(host *netns.NS, index int) bool {
	var ok bool
	host.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		if err != nil || len(msgs) == 0 || len(msgs[0]) < unix.SizeofIfInfomsg {
			return err
		}
		st := attrAt(msgs[0][unix.SizeofIfInfomsg:], unix.IFLA_LINKINFO, nl.IFLA_INFO_SLAVE_DATA, nl.IFLA_BRPORT_STATE)
		ok = len(st) > 0 && st[0] == brForwarding
		return nil
	})
	return ok
}

// markPort gives the host veth with index its mark (interface alias) and
// makes it a port of the bridge with index bridge, in one request
// (vishvananda/netlink sends each in one of its own): a new veth, still
// down, or, as a repair, one whose mark it gives again.
func markPort(host *netns.NS, index, bridge int, mark string) error {
	return host.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(mark)))
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(bridge))))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

// openPort readies the port with index, named name, and lets it forward,
// from one thread switch into host: no IPv6 on it (sysctl), then, in one
// request, hairpin on, isolated if isolated, and up. The kernel applies a
// port's settings (IFLA_INFO_SLAVE_DATA) before the link's flags, so the
// port is isolated before it forwards. The port must be one of a bridge
// already. The returned watch, listening from before the port went up,
// tells when it forwards; the caller closes it.
func openPort(host *netns.NS, index int, name string, isolated bool) (*portWatch, error) {
	w := &portWatch{host: host, index: index}
	err := host.Do(func() error {
		// A bridge port needs no addresses: no IPv6 on it, so neither
		// router advertisements nor the link-local address, DAD and MLD
		// traffic that every new port would otherwise flood to every
		// other port.
		if err := writeSysctl(host, "net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
			return err
		}
		// The watch is only a shortcut: without it, forwarding polls.
		if fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE); err == nil {
			if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err == nil {
				w.sub = os.NewFile(uintptr(fd), "rtnetlink-link")
			} else {
				unix.Close(fd)
			}
		}
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		msg.Flags = unix.IFF_UP
		msg.Change = unix.IFF_UP
		req.AddData(msg)
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_SLAVE_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_SLAVE_DATA, nil)
		// Hairpin: a container reaches its own published ports through
		// the host, which sends the packet back out of the port it came
		// in by.
		data.AddRtAttr(nl.IFLA_BRPORT_MODE, []byte{1})
		iso := byte(0)
		if isolated {
			iso = 1
		}
		data.AddRtAttr(nl.IFLA_BRPORT_ISOLATED, []byte{iso})
		req.AddData(info)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return &netns.OpError{Op: "bridge.port", NS: host.String(), Name: name, Err: err}
		}
		return nil
	})
	if err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// A portWatch tells when a bridge port forwards: from the bridge's
// announcements of its ports' state (RTM_NEWLINK of family AF_BRIDGE), so
// that an attach waits no longer than the kernel takes (it brings the
// port to forwarding from a worker, once the pair's carrier is up), or by
// polling if it cannot listen.
type portWatch struct {
	host  *netns.NS
	index int
	sub   *os.File
	seen  bool
}

// forwarding waits, up to a second, until the port forwards, and reports
// whether it does.
func (w *portWatch) forwarding() bool {
	if w.seen {
		return true
	}
	if w.sub == nil {
		w.seen = portForwarding(w.host, w.index)
		return w.seen
	}
	w.sub.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 16<<10)
	for !w.seen {
		n, err := w.sub.Read(buf)
		if err != nil { // late, or messages lost: ask
			w.sub.Close()
			w.sub = nil
			w.seen = portForwarding(w.host, w.index)
			return w.seen
		}
		msgs, _ := syscall.ParseNetlinkMessage(buf[:n])
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_NEWLINK && len(m.Data) >= unix.SizeofIfInfomsg && m.Data[0] == unix.AF_BRIDGE &&
				int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))) == w.index && protinfoForwarding(m.Data[unix.SizeofIfInfomsg:]) {
				w.seen = true
			}
		}
	}
	return true
}

// protinfoForwarding reports whether the attributes of a bridge's port
// announcement say that it forwards.
func protinfoForwarding(b []byte) bool {
	st := attrAt(b, unix.IFLA_PROTINFO, nl.IFLA_BRPORT_STATE)
	return len(st) > 0 && st[0] == brForwarding
}

// brForwarding is BR_STATE_FORWARDING, a port's state.
const brForwarding = 3

// attrAt returns the value of the attribute that path names in the
// attributes b, each type of it but the last a nested attribute's; nil if
// it is not there.
func attrAt(b []byte, path ...uint16) []byte {
	for _, t := range path {
		attrs, err := nl.ParseRouteAttr(b)
		if err != nil {
			return nil
		}
		i := slices.IndexFunc(attrs, func(a syscall.NetlinkRouteAttr) bool { return a.Attr.Type&^unix.NLA_F_NESTED == t })
		if i < 0 {
			return nil
		}
		b = attrs[i].Value
	}
	return b
}

func (w *portWatch) close() {
	if w != nil && w.sub != nil {
		w.sub.Close()
		w.sub = nil
	}
}

// writeSysctl writes a sysctl of the namespace the calling thread is in
// (inside host.Do), as host.SetSysctl does; host names it in the error.
func writeSysctl(host *netns.NS, key, value string) error {
	f, err := os.OpenFile(filepath.Join("/proc/sys", key), os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return &netns.OpError{Op: "netns.sysctl", NS: host.String(), Name: key, Err: err}
	}
	return nil
}
