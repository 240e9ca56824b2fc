//go:build linux

// Package ctrlink configures a container's interface the way every nsnet
// network driver does (bridge, macvlan): Docker's settings for an
// endpoint, its addresses, and its default route.
package ctrlink

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Configure sets up interface l of ns, or repairs it (each step is
// idempotent: an address or route that is there is kept): sysctls first (no router
// advertisements; no IPv6 at all without an IPv6 address, as in Docker, so
// no link-local address answers on the network; a gratuitous ARP when it
// comes up), then addrs (IPv6 without DAD), up, and, if defaultRoute, a
// default route via the gateway of each of subnets with the given metric.
// Kernel failures are *netns.OpError with Op pkg+".address", ".up" or
// ".route".
func Configure(ns *netns.NS, pkg string, l netlink.Link, addrs []netip.Prefix, subnets []ipam.SubnetConfig, defaultRoute bool, metric int) error {
	ch, err := ns.Netlink()
	if err != nil {
		return err
	}
	name := l.Attrs().Name
	opErr := func(op string, err error) error {
		return &netns.OpError{Op: pkg + "." + op, NS: ns.String(), Name: name, Err: err}
	}
	sysctls := [][2]string{{"net/ipv6/conf/" + name + "/accept_ra", "0"}}
	if !slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		sysctls = append(sysctls, [2]string{"net/ipv6/conf/" + name + "/disable_ipv6", "1"})
	}
	sysctls = append(sysctls, [2]string{"net/ipv4/conf/" + name + "/arp_notify", "1"})
	if err := setSysctls(ns, sysctls); err != nil {
		return err
	}
	for _, a := range addrs {
		na := &netlink.Addr{IPNet: ipnet.From(a)}
		if a.Addr().Is6() {
			na.Flags = unix.IFA_F_NODAD
		}
		if err := ch.AddrAdd(l, na); err != nil && !errors.Is(err, os.ErrExist) {
			return opErr("address", err)
		}
	}
	if err := ch.LinkSetUp(l); err != nil {
		return opErr("up", err)
	}
	if !defaultRoute {
		return nil
	}
	for _, sn := range subnets {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: sn.Gateway.AsSlice(), Priority: metric}
		if sn.Gateway.Is6() {
			r.Family = netlink.FAMILY_V6
		}
		if err := ch.RouteAdd(r); err != nil && !errors.Is(err, os.ErrExist) {
			return opErr("route", err)
		}
	}
	return nil
}

// setSysctls writes the sysctls kv (key, value) of ns, in this order, from
// one thread switch into ns (NS.SetSysctl makes one per key).
func setSysctls(ns *netns.NS, kv [][2]string) error {
	return ns.Do(func() error {
		for _, s := range kv {
			f, err := os.OpenFile(filepath.Join("/proc/sys", s[0]), os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteString(s[1])
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				return &netns.OpError{Op: "netns.sysctl", NS: ns.String(), Name: s[0], Err: err}
			}
		}
		return nil
	})
}

// NextIfName returns eth0, or the first ethN that no link of links has.
func NextIfName(links []netlink.Link) string {
	for i := 0; ; i++ {
		name := "eth" + strconv.Itoa(i)
		if !slices.ContainsFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == name }) {
			return name
		}
	}
}
