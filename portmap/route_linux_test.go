package portmap_test

import (
	"net/netip"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/vishvananda/netlink"
)

func addRoute(h *netlink.Handle, dst string, via netip.Addr) error {
	return h.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.MustParsePrefix(dst)), Gw: via.AsSlice()})
}
