//go:build linux

package ctrlink

import (
	"net"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Missing is one thing Check found missing on a container's interface:
// Kind "up", "address" or "route", and which.
type Missing struct{ Kind, What string }

// Check reports, without changing anything, what Configure would have to
// add to interface l of ns: up, each of addrs, and if defaultRoute the
// default route via the gateway of each of subnets.
func Check(ns *netns.NS, l netlink.Link, addrs []netip.Prefix, subnets []ipam.SubnetConfig, defaultRoute bool) ([]Missing, error) {
	var out []Missing
	name := l.Attrs().Name
	if l.Attrs().Flags&net.FlagUp == 0 {
		out = append(out, Missing{"up", name})
	}
	have, err := ns.Addrs(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	for _, w := range addrs {
		if !slices.ContainsFunc(have, func(a netlink.Addr) bool { return Prefix(a) == w }) {
			out = append(out, Missing{"address", w.String() + " on " + name})
		}
	}
	if defaultRoute {
		routes, err := ns.Routes(netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, s := range subnets {
			if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
				gw, _ := netip.AddrFromSlice(r.Gw)
				return r.LinkIndex == l.Attrs().Index && gw.Unmap() == s.Gateway && (r.Dst == nil || r.Dst.IP.IsUnspecified())
			}) {
				out = append(out, Missing{"route", "default via " + s.Gateway.String()})
			}
		}
	}
	return out, nil
}

// Prefix is a netlink address as a netip.Prefix.
func Prefix(a netlink.Addr) netip.Prefix {
	ip, _ := netip.AddrFromSlice(a.IP)
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

// Addrs returns the addresses of interface l of ns that lie in subnets:
// what an endpoint holds in the kernel, whatever its IPAM store says.
func Addrs(ns *netns.NS, l netlink.Link, subnets []ipam.SubnetConfig) []netip.Addr {
	have, err := ns.Addrs(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range have {
		p := Prefix(a)
		if slices.ContainsFunc(subnets, func(s ipam.SubnetConfig) bool { return s.Subnet.Contains(p.Addr()) }) {
			out = append(out, p.Addr())
		}
	}
	return out
}
