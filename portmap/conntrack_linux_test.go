package portmap

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestConntrackFilters deletes conntrack entries by filter, through the
// kernel's filtered flush and through the filtered dump that older kernels
// and large batches use, and checks that exactly the selected entries go:
// an entry that differs from a filter in any one field stays.
func TestConntrackFilters(t *testing.T) {
	t.Parallel()
	type entry struct {
		proto        uint8
		src, dst     string
		sport, dport uint16
		replySrc     string
		replySport   uint16
		selected     bool
	}
	entries := []entry{
		// 10.8.0.1:5000/udp, the filter on one address.
		{17, "10.9.0.1", "10.8.0.1", 1000, 5000, "10.8.0.1", 5000, true},
		{17, "10.9.0.2", "10.8.0.1", 1001, 5000, "10.8.0.1", 5000, true},
		{17, "10.9.0.1", "10.8.0.2", 1000, 5000, "10.8.0.2", 5000, false}, // another address
		{17, "10.9.0.1", "10.8.0.1", 1000, 5001, "10.8.0.1", 5001, false}, // another port
		{6, "10.9.0.1", "10.8.0.1", 1000, 5000, "10.8.0.1", 5000, false},  // tcp
		// 5100/udp on every address, DNATed to 172.31.0.2:53.
		{17, "10.9.0.1", "10.8.0.1", 1000, 5100, "172.31.0.2", 53, true},
		{17, "10.9.0.1", "10.8.0.7", 1005, 5100, "172.31.0.2", 53, true},
		{17, "10.9.0.1", "10.8.0.1", 1002, 5100, "172.31.0.3", 53, false}, // another container
		{17, "10.9.0.1", "10.8.0.1", 1003, 5100, "172.31.0.2", 54, false}, // another container port
		{17, "10.9.0.1", "10.8.0.1", 1004, 5100, "10.8.0.1", 5100, false}, // not DNATed
		// IPv6: fd00::1 port 5200.
		{17, "fd01::1", "fd00::1", 1000, 5200, "fd00::1", 5200, true},
		{17, "fd01::1", "fd00::2", 1000, 5200, "fd00::2", 5200, false},
		{17, "fd01::1", "fd00::1", 1000, 5201, "fd00::1", 5201, false},
	}
	filters := []ctFilter{
		{proto: 17, dst: netip.MustParseAddr("10.8.0.1"), port: 5000},
		{proto: 17, port: 5100, ctr: netip.MustParseAddrPort("172.31.0.2:53")},
		{v6: true, proto: 17, dst: netip.MustParseAddr("fd00::1"), port: 5200},
	}
	for _, path := range []string{"flush", "dump"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			host := nstest.Host(t)
			h, err := host.Netlink()
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				fam := netlink.FAMILY_V4
				ip := func(s string) net.IP { return net.ParseIP(s).To4() }
				if netip.MustParseAddr(e.src).Is6() {
					fam, ip = netlink.FAMILY_V6, func(s string) net.IP { return net.ParseIP(s) }
				}
				f := &netlink.ConntrackFlow{FamilyType: uint8(fam), TimeOut: 600,
					Forward: netlink.IPTuple{SrcIP: ip(e.src), DstIP: ip(e.dst), Protocol: e.proto, SrcPort: e.sport, DstPort: e.dport},
					Reverse: netlink.IPTuple{SrcIP: ip(e.replySrc), DstIP: ip(e.src), Protocol: e.proto, SrcPort: e.replySport, DstPort: e.sport}}
				if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(fam), f); err != nil {
					t.Fatalf("entry %+v: %v", e, err)
				}
			}
			mp, err := New(host, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer mp.Close()
			mp.mu.Lock()
			mp.ctNoFlush = path == "dump"
			err = mp.ctForget(filters)
			mp.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
				flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range flows {
					left = append(left, fmt.Sprintf("%d %s:%d", f.Forward.Protocol, f.Forward.DstIP, f.Forward.DstPort)+
						fmt.Sprintf(" from %s:%d", f.Reverse.SrcIP, f.Reverse.SrcPort)+fmt.Sprintf(" sport %d", f.Forward.SrcPort))
				}
			}
			for _, e := range entries {
				key := fmt.Sprintf("%d %s:%d from %s:%d sport %d", e.proto, e.dst, e.dport, e.replySrc, e.replySport, e.sport)
				if there := slices.Contains(left, key); there == e.selected {
					t.Errorf("entry %s (selected: %v): still there: %v", key, e.selected, there)
				}
			}
		})
	}
}
