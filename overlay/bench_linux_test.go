package overlay_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
)

// BenchmarkConvergence measures, for 100 endpoints attached one after the
// other on host A, the time from Attach returning to the first answer to
// a container of host B that keeps sending to the new endpoint (a UDP
// datagram every 200 µs), and reports the median and the 99th percentile.
//
//	go test -run '^$' -bench Convergence -benchtime 1x ./overlay/
func BenchmarkConvergence(b *testing.B) {
	for _, kind := range []string{"memory", "etcd"} {
		b.Run(kind, func(b *testing.B) {
			var c *cluster
			if kind == "memory" {
				c = newCluster(b, 2, ipam.NewMemoryStore())
			} else {
				c = etcdCluster(b, etcdtest.Start(b), 2, 0)
			}
			hosts, topo := c.hosts, c.topo
			na, err := hosts[0].Create(b.Context(), overlay.Config{Name: "ov", VNI: 42, Internal: true,
				Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.80.0.0/20")}}})
			if err != nil {
				b.Fatal(err)
			}
			nb, err := hosts[1].Network(b.Context(), "ov")
			if err != nil {
				b.Fatal(err)
			}
			client := nstest.Container(b, topo.Hosts[1].NS)
			if _, err := nb.Attach(b.Context(), overlay.EndpointConfig{ID: "client", NS: client}); err != nil {
				b.Fatal(err)
			}
			defer nb.Detach(context.Background(), "client")
			conn, err := client.ListenPacket("udp4", ":0")
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()

			var took []time.Duration
			buf := make([]byte, 64)
			for range b.N {
				for i := range 100 {
					id := fmt.Sprint("c", len(took))
					ns := nstest.Container(b, topo.Hosts[0].NS)
					nstest.Serve(b, ns, "udp", "0.0.0.0:7")
					ep, err := na.Attach(b.Context(), overlay.EndpointConfig{ID: id, NS: ns})
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ep.Addrs[0].Addr(), 7))
					for {
						if time.Since(start) > 10*time.Second {
							b.Fatalf("endpoint %d: no answer in 10 s", i)
						}
						conn.WriteTo([]byte(id), dst)
						conn.SetReadDeadline(time.Now().Add(200 * time.Microsecond))
						// Answers to an earlier endpoint may still come.
						if n, _, err := conn.ReadFrom(buf); err == nil && strings.HasSuffix(string(buf[:n]), "\n"+id) {
							break
						}
					}
					took = append(took, time.Since(start))
					if d := time.Since(start); d > 100*time.Millisecond {
						b.Logf("endpoint %d (%s): %v", i, ep.Addrs[0], d)
					}
					if err := na.Detach(b.Context(), id); err != nil {
						b.Fatal(err)
					}
				}
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2])/float64(time.Millisecond), "median-ms")
			b.ReportMetric(float64(took[len(took)*99/100])/float64(time.Millisecond), "p99-ms")
		})
	}
}
