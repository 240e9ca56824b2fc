package portmap_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
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
			alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
			if err != nil {
				b.Fatal(err)
			}
			// The containers' network: mappings point into one.
			n, err := bridge.New(b.Context(), host, alloc, bridge.Config{Name: "bench",
				Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.31.0.0/16")}}})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Delete(context.Background(), true)
			mp := portmap.New(host, portmap.Config{})
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
