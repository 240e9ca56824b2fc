package bridge

import (
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
	const forwarding = 3 // BR_STATE_FORWARDING
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
		attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
		if err != nil {
			return err
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_LINKINFO {
				continue
			}
			infos, _ := nl.ParseRouteAttr(a.Value)
			for _, i := range infos {
				if i.Attr.Type&^unix.NLA_F_NESTED != nl.IFLA_INFO_SLAVE_DATA {
					continue
				}
				data, _ := nl.ParseRouteAttr(i.Value)
				for _, d := range data {
					if d.Attr.Type&^unix.NLA_F_NESTED == nl.IFLA_BRPORT_STATE && len(d.Value) > 0 {
						ok = d.Value[0] == forwarding
					}
				}
			}
		}
		return nil
	})
	return ok
}
