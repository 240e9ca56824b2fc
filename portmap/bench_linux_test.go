package portmap_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BenchmarkPublish publishes and unpublishes one mapping on a host that
// has 10, 1,000 or 10,000 mappings already, and reports the median of each
// (publish-ms, unpublish-ms) besides the mean of the pair (ns/op).
//
//	go test -run '^$' -bench Publish -benchmem ./portmap/
func BenchmarkPublish(b *testing.B) {
	for _, existing := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprint("existing=", existing), func(b *testing.B) {
			host := nstest.Host(b)
			benchNetwork(b, host) // the containers' network: mappings point into it
			mp := newMapper(b, host, portmap.Config{})
			defer mp.Close()
			ctr := netip.MustParseAddr("172.31.0.2")
			for i := range existing {
				m := portmap.Mapping{HostPort: 10000 + i, CtrAddr: ctr, CtrPort: 80, ID: fmt.Sprint("c", i)}
				if _, err := mp.Add(b.Context(), m); err != nil {
					b.Fatal(err)
				}
			}
			pub := make([]time.Duration, 0, b.N)
			unpub := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				m := portmap.Mapping{HostPort: 40000 + i%20000, CtrAddr: ctr, CtrPort: 8080, ID: "bench"}
				t0 := time.Now()
				if _, err := mp.Add(b.Context(), m); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := mp.Remove(b.Context(), m); err != nil {
					b.Fatal(err)
				}
				pub, unpub = append(pub, t1.Sub(t0)), append(unpub, time.Since(t1))
			}
			b.StopTimer()
			b.ReportMetric(median(pub), "publish-ms")
			b.ReportMetric(median(unpub), "unpublish-ms")
			for i := range existing {
				if err := mp.Remove(context.Background(), portmap.Mapping{HostPort: 10000 + i}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDetachPublished times a container's detach from a bridge
// network when it has one published TCP port: the unpublish by its owner
// (RemoveOwner) and the bridge's Detach, as an orchestrator does it. The
// attach and the publish before each are not timed. It reports the median
// (ms-median) besides the mean (ns/op).
//
//	go test -run '^$' -bench DetachPublished -benchtime 300x -benchmem ./portmap/
func BenchmarkDetachPublished(b *testing.B) {
	host := nstest.Host(b)
	n := benchNetwork(b, host)
	mp := newMapper(b, host, portmap.Config{})
	defer mp.Close()
	ctr := nstest.Container(b, host)
	var ds, us []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		ep, err := n.Attach(b.Context(), bridge.EndpointConfig{ID: "c1", NS: ctr, DefaultRoute: true})
		if err != nil {
			b.Fatal(err)
		}
		m := portmap.Mapping{HostPort: 8080, CtrAddr: ep.Addrs[0].Addr(), CtrPort: 80, ID: "c1"}
		if _, err := mp.Add(b.Context(), m); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := mp.RemoveOwner(b.Context(), "c1"); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := n.Detach(b.Context(), "c1"); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
		us = append(us, t1.Sub(t0))
	}
	b.StopTimer()
	b.ReportMetric(median(ds), "ms-median")
	b.ReportMetric(median(us), "unpublish-ms-median")
}

// BenchmarkUDP publishes and unpublishes one UDP mapping on a host whose
// conntrack table holds 10 or 10,000 entries already (UDP flows inserted
// through conntrack netlink in the sandbox host) and nsnet's table, and
// reports the median of each.
//
//	go test -run '^$' -bench UDP -benchmem ./portmap/
func BenchmarkUDP(b *testing.B) {
	for _, entries := range []int{10, 10000} {
		b.Run(fmt.Sprint("conntrack=", entries), func(b *testing.B) {
			host := nstest.Host(b)
			h, err := host.Netlink()
			if err != nil {
				b.Fatal(err)
			}
			for i := range entries {
				src := net.IPv4(10, 9, byte(i>>8), byte(i))
				dst := net.IPv4(10, 8, 0, 1)
				f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 600,
					Forward: netlink.IPTuple{SrcIP: src, DstIP: dst, Protocol: unix.IPPROTO_UDP, SrcPort: 1000 + uint16(i%50000), DstPort: 53},
					Reverse: netlink.IPTuple{SrcIP: dst, DstIP: src, Protocol: unix.IPPROTO_UDP, SrcPort: 53, DstPort: 1000 + uint16(i%50000)}}
				if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.FAMILY_V4, f); err != nil {
					b.Fatalf("conntrack entry %d: %v", i, err)
				}
			}
			mp := newMapper(b, host, portmap.Config{})
			defer mp.Close()
			ctr := netip.MustParseAddr("172.31.0.2")
			// One other mapping keeps nsnet's table, as on any host with
			// a network: the first mapping's Add creates it (about 1.5 ms)
			// and the last one's Remove deletes it.
			keep := portmap.Mapping{HostPort: 9999, CtrAddr: ctr, CtrPort: 80, ID: "keep"}
			if _, err := mp.Add(b.Context(), keep); err != nil {
				b.Fatal(err)
			}
			defer mp.Remove(context.Background(), keep)
			pub := make([]time.Duration, 0, b.N)
			unpub := make([]time.Duration, 0, b.N)
			for i := 0; b.Loop(); i++ {
				m := portmap.Mapping{Proto: "udp", HostPort: 40000 + i%20000, CtrAddr: ctr, CtrPort: 53, ID: "bench"}
				t0 := time.Now()
				if _, err := mp.Add(b.Context(), m); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := mp.Remove(b.Context(), m); err != nil {
					b.Fatal(err)
				}
				pub, unpub = append(pub, t1.Sub(t0)), append(unpub, time.Since(t1))
			}
			b.ReportMetric(median(pub), "publish-ms")
			b.ReportMetric(median(unpub), "unpublish-ms")
		})
	}
}

// BenchmarkAddAll1000 publishes 1,000 mappings (on every address, to 10
// containers of one network; all TCP, as CNI's and Docker's comparisons
// publish, or half TCP and half UDP, whose conntrack cleanup is one
// filtered dump) in one AddAll on a host with 10 mappings, and removes them
// with one RemoveAll; BenchmarkRemoveAll1000 measures the RemoveAll. Both
// report the median of each (publish-ms, unpublish-ms).
//
//	go test -run '^$' -bench 'All1000' -benchmem ./portmap/
func BenchmarkAddAll1000(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchBatch(b, true, false) })
	b.Run("tcp+udp", func(b *testing.B) { benchBatch(b, true, true) })
}

func BenchmarkRemoveAll1000(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchBatch(b, false, false) })
	b.Run("tcp+udp", func(b *testing.B) { benchBatch(b, false, true) })
}

func benchBatch(b *testing.B, add, udp bool) {
	host := nstest.Host(b)
	benchNetwork(b, host)
	mp := newMapper(b, host, portmap.Config{})
	defer mp.Close()
	var others, batch []portmap.Mapping
	for i := range 10 {
		others = append(others, portmap.Mapping{HostPort: 10000 + i, CtrAddr: netip.MustParseAddr("172.31.1.1"), CtrPort: 80, ID: "other"})
	}
	if _, err := mp.AddAll(b.Context(), others); err != nil {
		b.Fatal(err)
	}
	defer mp.RemoveAll(context.Background(), others)
	for i := range 1000 {
		proto := "tcp"
		if udp && i%2 == 1 {
			proto = "udp"
		}
		ctr := netip.AddrFrom4([4]byte{172, 31, 0, byte(2 + i%10)})
		batch = append(batch, portmap.Mapping{Proto: proto, HostPort: 20000 + i, CtrAddr: ctr, CtrPort: 80, ID: fmt.Sprint("c", i%10)})
	}
	pub := make([]time.Duration, 0, b.N)
	unpub := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		if !add {
			b.StopTimer()
		}
		t0 := time.Now()
		if _, err := mp.AddAll(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if !add {
			b.StartTimer()
		} else {
			b.StopTimer()
		}
		t2 := time.Now()
		if err := mp.RemoveAll(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if add {
			b.StartTimer()
		}
		pub, unpub = append(pub, t1.Sub(t0)), append(unpub, t3.Sub(t2))
	}
	b.StopTimer()
	b.ReportMetric(median(pub), "publish-ms")
	b.ReportMetric(median(unpub), "unpublish-ms")
}

// BenchmarkMasquerade masquerades one network of a host whose other
// networks (none or 99) are masqueraded already, and takes it away again.
//
//	go test -run '^$' -bench Masquerade -benchmem ./portmap/
func BenchmarkMasquerade(b *testing.B) {
	for _, others := range []int{0, 99} {
		b.Run(fmt.Sprint("others=", others), func(b *testing.B) {
			host := nstest.Host(b)
			alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
			if err != nil {
				b.Fatal(err)
			}
			var nets []nat.Network
			for i := range others + 1 {
				subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i), 0}), 24)
				n, err := bridge.New(b.Context(), host, alloc, bridge.Config{Name: fmt.Sprint("net", i),
					Subnets: []ipam.SubnetConfig{{Subnet: subnet}}})
				if err != nil {
					b.Fatal(err)
				}
				defer n.Delete(context.Background(), true)
				nets = append(nets, nat.Network{Bridge: n.Config().Bridge, Subnets: []netip.Prefix{subnet}})
			}
			for _, n := range nets[:others] {
				if err := nat.Masquerade(b.Context(), host, n); err != nil {
					b.Fatal(err)
				}
			}
			last := nets[others]
			b.ResetTimer()
			for b.Loop() {
				if err := nat.Masquerade(b.Context(), host, last); err != nil {
					b.Fatal(err)
				}
				if err := nat.Remove(b.Context(), host, last.Bridge); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// median in milliseconds.
func median(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[len(ds)/2]) / float64(time.Millisecond)
}

// benchNetwork makes the bridge network "bench" (172.31.0.0/16) on host,
// with an allocator of its own, deleted when the benchmark ends.
func benchNetwork(b *testing.B, host *netns.NS) *bridge.Network {
	b.Helper()
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		b.Fatal(err)
	}
	n, err := bridge.New(b.Context(), host, alloc, bridge.Config{Name: "bench",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.31.0.0/16")}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Delete(context.Background(), true) })
	return n
}

func newMapper(tb testing.TB, host *netns.NS, cfg portmap.Config) *portmap.Mapper {
	tb.Helper()
	mp, err := portmap.New(host, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return mp
}

// BenchmarkAddAll1000First publishes 1,000 mappings (on every address, to
// 10 containers of one network, all TCP or half UDP) in one AddAll on a
// fresh host each time, whose table holds 10 mappings: the first batch of
// a host, which the kernel's maps have not grown for yet. The host, its
// network and the 10 mappings are made with the timer stopped.
//
//	go test -run '^$' -bench 'All1000First' -benchmem -benchtime 20x ./portmap/
func BenchmarkAddAll1000First(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchFirst(b, false) })
	b.Run("tcp+udp", func(b *testing.B) { benchFirst(b, true) })
}

func benchFirst(b *testing.B, udp bool) {
	var batch []portmap.Mapping
	for i := range 1000 {
		proto := "tcp"
		if udp && i%2 == 1 {
			proto = "udp"
		}
		ctr := netip.AddrFrom4([4]byte{172, 31, 0, byte(2 + i%10)})
		batch = append(batch, portmap.Mapping{Proto: proto, HostPort: 20000 + i, CtrAddr: ctr, CtrPort: 80, ID: fmt.Sprint("c", i%10)})
	}
	pub := make([]time.Duration, 0, b.N)
	for b.Loop() {
		b.StopTimer()
		host := nstest.Host(b)
		n := benchNetwork(b, host) // deleted below, before the next host's turn
		mp := newMapper(b, host, portmap.Config{})
		var others []portmap.Mapping
		for i := range 10 {
			others = append(others, portmap.Mapping{HostPort: 10000 + i, CtrAddr: netip.MustParseAddr("172.31.1.1"), CtrPort: 80, ID: "other"})
		}
		if _, err := mp.AddAll(b.Context(), others); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if _, err := mp.AddAll(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		pub = append(pub, time.Since(t0))
		b.StopTimer()
		if err := mp.RemoveAll(context.Background(), append(others, batch...)); err != nil {
			b.Fatal(err)
		}
		mp.Close()
		if err := n.Delete(context.Background(), true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(median(pub), "publish-ms")
}
