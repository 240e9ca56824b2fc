//go:build linux

package nstest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// Snapshot renders, in a stable text form, everything of ns that a network
// library could change: every link with its attributes (kind, state, MTU,
// MAC, master, alias), every address and route, every nftables table with
// its chains, rules and set elements, and the forwarding and route_localnet
// sysctls. Two snapshots are equal exactly
// when none of that changed: a test of bad input compares one taken before
// the call with one taken after.
func Snapshot(t testing.TB, ns *netns.NS) string {
	t.Helper()
	var lines []string
	links, err := ns.Links()
	if err != nil {
		t.Fatalf("nstest.Snapshot: %v", err)
	}
	for _, l := range links {
		a := l.Attrs()
		lines = append(lines, fmt.Sprintf("link %d %s %s %s mtu %d mac %s master %d alias %q",
			a.Index, a.Name, l.Type(), a.OperState, a.MTU, a.HardwareAddr, a.MasterIndex, a.Alias))
	}
	addrs, err := ns.Addrs(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("nstest.Snapshot: %v", err)
	}
	for _, a := range addrs {
		lines = append(lines, fmt.Sprintf("addr %s dev %d", a.IPNet, a.LinkIndex))
	}
	routes, err := ns.Routes(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("nstest.Snapshot: %v", err)
	}
	for _, r := range routes {
		lines = append(lines, fmt.Sprintf("route %v via %v dev %d metric %d table %d", r.Dst, r.Gw, r.LinkIndex, r.Priority, r.Table))
	}
	err = ns.NFTables(func(c *nftables.Conn) error {
		tables, err := c.ListTables()
		if err != nil {
			return err
		}
		for _, tb := range tables {
			name := fmt.Sprintf("table %s %s", family(tb.Family), tb.Name)
			lines = append(lines, name)
			chains, err := c.ListChainsOfTableFamily(tb.Family)
			if err != nil {
				return err
			}
			for _, ch := range chains {
				if ch.Table.Name != tb.Name {
					continue
				}
				rules, err := c.GetRules(tb, ch)
				if err != nil {
					return err
				}
				for _, r := range rules {
					lines = append(lines, fmt.Sprintf("%s chain %s rule %d %x", name, ch.Name, r.Handle, r.UserData))
				}
			}
			sets, err := c.GetSets(tb)
			if err != nil {
				return err
			}
			for _, s := range sets {
				elems, err := c.GetSetElements(s)
				if err != nil {
					return err
				}
				for _, e := range elems {
					lines = append(lines, fmt.Sprintf("%s set %s %x %x %x", name, s.Name, e.Key, e.KeyEnd, e.Val))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nstest.Snapshot: %v", err)
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet"} {
		v, err := ns.Sysctl(k)
		if err != nil {
			t.Fatalf("nstest.Snapshot: %v", err)
		}
		lines = append(lines, "sysctl "+k+" "+v)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// Untouched runs call and returns its error, failing t if call panicked or
// if it changed any of nss (compared by Snapshot before and after): what a
// test of bad input asserts for every call it makes.
func Untouched(t testing.TB, call func() error, nss ...*netns.NS) (err error) {
	t.Helper()
	before := make([]string, len(nss))
	for i, ns := range nss {
		before[i] = Snapshot(t, ns)
	}
	func() {
		defer func() {
			if v := recover(); v != nil {
				t.Errorf("panic: %v", v)
				err = fmt.Errorf("panic: %v", v)
			}
		}()
		err = call()
	}()
	for i, ns := range nss {
		if after := Snapshot(t, ns); after != before[i] {
			t.Errorf("%s changed:\n%s\n--- after:\n%s", ns, before[i], after)
		}
	}
	return err
}
