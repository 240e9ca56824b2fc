//go:build linux

// Command netns-veth shows two namespaces joined by a veth
// pair, then a namespace wired to its host, inside a sandbox host namespace.
//
//	sudo go run ./examples/netns-veth
//
// It prints each check and exits non-zero if one fails. It creates the
// named namespaces test1 and test2 (in /var/run/netns unless -netns-dir says
// otherwise, so `ip netns list` shows them while it runs) and deletes them
// again.
package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	if err := twoNamespaces(ctx, env); err != nil {
		return err
	}
	return hostAndNamespace(ctx, env)
}

// twoNamespaces: ip netns add test1; ip netns add test2; a veth pair with
// one end in each, 192.168.1.1/24 and 192.168.1.2/24; ping both ways.
func twoNamespaces(ctx context.Context, env check.Env) error {
	log := env.Log
	test1, err := env.Dir.New("test1")
	if err != nil {
		return err
	}
	defer env.Dir.Delete("test1")
	defer test1.Close()
	test2, err := env.Dir.New("test2")
	if err != nil {
		return err
	}
	defer env.Dir.Delete("test2")
	defer test2.Close()

	names, err := env.Dir.List()
	log.OK(fmt.Sprintf("ip netns list shows test1 and test2 (%v)", names), check.Expect(err, !slices.Contains(names, "test1") || !slices.Contains(names, "test2"), "missing"))

	// A fresh namespace has only lo, and lo is down.
	links, err := test1.Links()
	if err != nil {
		return err
	}
	loDown := len(links) == 1 && links[0].Attrs().Name == "lo" && links[0].Attrs().Flags&net.FlagUp == 0
	log.OK("test1 has only lo, and it is DOWN", check.Expect(nil, !loDown, "links: %d", len(links)))
	log.Refused("ping 127.0.0.1 in test1 with lo down", nstest.Ping(ctx, test1, netip.MustParseAddr("127.0.0.1")))
	for _, ns := range []*netns.NS{test1, test2} {
		if err := ns.LoopbackUp(); err != nil {
			return err
		}
	}
	log.OK("ping 127.0.0.1 in test1 with lo up", nstest.Ping(ctx, test1, netip.MustParseAddr("127.0.0.1")))

	// ip link add veth-test1 netns test1 type veth peer name veth-test2 netns test2
	ends, err := veth.Pair(ctx, test1, veth.Config{
		Name: "veth-test1",
		Peer: veth.End{NS: test2, Name: "veth-test2"},
		Up:   true,
	})
	if !log.OK("veth pair veth-test1 (in test1) / veth-test2 (in test2)", err) {
		return err
	}
	defer veth.Delete(ctx, test1, "veth-test1")
	if err := check.AddAddr(ends.Host, "192.168.1.1/24"); err != nil {
		return err
	}
	if err := check.AddAddr(ends.Peer, "192.168.1.2/24"); err != nil {
		return err
	}
	log.OK("ping 192.168.1.2 from test1", nstest.Ping(ctx, test1, netip.MustParseAddr("192.168.1.2")))
	log.OK("ping 192.168.1.1 from test2", nstest.Ping(ctx, test2, netip.MustParseAddr("192.168.1.1")))
	log.OK("TCP from test1 to test2", check.Exchange(ctx, test1, test2, "192.168.1.2:8080", "192.168.1.1"))

	if err := veth.Delete(ctx, test1, "veth-test1"); err != nil {
		return err
	}
	links, _ = test2.Links()
	log.OK("deleting veth-test1 removed veth-test2 too", check.Expect(nil, len(links) != 1, "test2 has %d links", len(links)))
	test1.Close()
	test2.Close()
	for _, n := range []string{"test1", "test2"} {
		if err := env.Dir.Delete(n); err != nil {
			return err
		}
	}
	names, err = env.Dir.List()
	log.OK("ip netns delete test1 test2", check.Expect(err, slices.Contains(names, "test1") || slices.Contains(names, "test2"), "still listed: %v", names))
	return nil
}

// hostAndNamespace: one end stays in the host (172.31.100.100/24), the other
// goes into a namespace (172.31.100.200/24, default route via the host end).
// The namespace reaches the host's other addresses, but not beyond the host:
// without NAT the outside has no route back.
func hostAndNamespace(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	ns, err := env.Dir.New("test3")
	if err != nil {
		return err
	}
	defer env.Dir.Delete("test3")
	defer ns.Close()
	if err := ns.LoopbackUp(); err != nil {
		return err
	}

	// The host's uplink to an "outside" network, itself a namespace.
	outside, err := netns.New()
	if err != nil {
		return err
	}
	defer outside.Close()
	uplink, err := veth.Pair(ctx, host, veth.Config{Name: "eth0", Peer: veth.End{NS: outside, Name: "eth0"}, Up: true})
	if err != nil {
		return err
	}
	defer veth.Delete(ctx, host, "eth0")
	if err := check.AddAddr(uplink.Host, "198.51.100.1/24"); err != nil {
		return err
	}
	if err := check.AddAddr(uplink.Peer, "198.51.100.254/24"); err != nil {
		return err
	}

	ends, err := veth.Pair(ctx, host, veth.Config{Name: "veth-host", Peer: veth.End{NS: ns, Name: "veth-ns"}, Up: true})
	if !log.OK("veth pair veth-host (in the host) / veth-ns (in test3)", err) {
		return err
	}
	defer veth.Delete(ctx, host, "veth-host")
	if err := check.AddAddr(ends.Host, "172.31.100.100/24"); err != nil {
		return err
	}
	if err := check.AddAddr(ends.Peer, "172.31.100.200/24"); err != nil {
		return err
	}
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: ends.Peer.Index, Gw: net.ParseIP("172.31.100.100")}); err != nil {
		return err
	}
	log.OK("test3: default route via 172.31.100.100", nil)
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	log.OK("ping the host end 172.31.100.100 from test3", nstest.Ping(ctx, ns, netip.MustParseAddr("172.31.100.100")))
	log.OK("ping the host's other address 198.51.100.1 from test3", nstest.Ping(ctx, ns, netip.MustParseAddr("198.51.100.1")))
	log.OK("the host reaches the outside 198.51.100.254", nstest.Ping(ctx, host, netip.MustParseAddr("198.51.100.254")))
	log.Refused("ping the outside 198.51.100.254 from test3 without NAT", nstest.Ping(ctx, ns, netip.MustParseAddr("198.51.100.254")))

	// Teardown in order: links, then the namespace.
	for _, name := range []string{"veth-host", "eth0"} {
		if err := veth.Delete(ctx, host, name); err != nil {
			return err
		}
	}
	ns.Close()
	return env.Dir.Delete("test3")
}
