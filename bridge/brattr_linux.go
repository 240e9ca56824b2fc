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
