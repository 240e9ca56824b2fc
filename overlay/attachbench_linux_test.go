package overlay_test

import (
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
)

// BenchmarkAttach attaches one container (its namespace made beforehand)
// to an internal overlay of a host, on a memory store and on etcd; the
// detach after each is timed apart, as BenchmarkAttach/…/detach.
//
//	go test -run '^$' -bench 'Attach$' -benchtime 200x ./overlay/
func BenchmarkAttach(b *testing.B) {
	for _, kind := range []string{"memory", "etcd"} {
		var c *cluster
		if kind == "memory" {
			c = newCluster(b, 1, ipam.NewMemoryStore())
		} else {
			c = etcdCluster(b, etcdtest.Start(b), 1, 0)
		}
		n, err := c.hosts[0].Create(b.Context(), overlay.Config{Name: "ov", VNI: 43, Internal: true, Subnets: subnets("10.81.0.0/20")})
		if err != nil {
			b.Fatal(err)
		}
		ctr := nstest.Container(b, c.topo.Hosts[0].NS)
		for _, op := range []string{"attach", "detach"} {
			b.Run(kind+"/"+op, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if op == "detach" {
						b.StopTimer()
					}
					if _, err := n.Attach(b.Context(), overlay.EndpointConfig{ID: "bench", NS: ctr}); err != nil {
						b.Fatal(err)
					}
					if op == "detach" {
						b.StartTimer()
					} else {
						b.StopTimer()
					}
					if err := n.Detach(b.Context(), "bench"); err != nil {
						b.Fatal(err)
					}
					if op == "attach" {
						b.StartTimer()
					}
				}
			})
		}
	}
}
