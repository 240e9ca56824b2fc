package bridge

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// BenchmarkAttach attaches one container (its namespace made beforehand)
// to a network; the detach after each is not timed (see BenchmarkDetach).
func BenchmarkAttach(b *testing.B) {
	host := nstest.Host(b)
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Subnets: subnet("10.64.0.0/16", "")})
	ctr := nstest.Container(b, host)
	b.ReportAllocs()
	var m medianOf
	for b.Loop() {
		t0 := time.Now()
		if _, err := n.Attach(b.Context(), EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}); err != nil {
			b.Fatal(err)
		}
		m.add(t0)
		b.StopTimer()
		if err := n.Detach(b.Context(), "bench"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	m.report(b)
}

// medianOf collects the times of a benchmark's operations and reports their
// median (ns/op-median): on a loaded machine the mean (ns/op) follows a
// few operations that waited long for a CPU.
type medianOf []time.Duration

func (m *medianOf) add(since time.Time) { *m = append(*m, time.Since(since)) }

func (m medianOf) report(b *testing.B) {
	if len(m) > 0 {
		slices.Sort(m)
		b.ReportMetric(float64(m[len(m)/2].Nanoseconds()), "ns/op-median")
	}
}

// BenchmarkAttachDetach attaches one container and detaches it again, both
// timed: what the kernel does for a detach after Detach returned (it
// finishes unregistering the pair under its rtnl lock) delays the next
// request, which BenchmarkAttach counts as the attach's; a cycle counts
// everything once.
func BenchmarkAttachDetach(b *testing.B) {
	host := nstest.Host(b)
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Subnets: subnet("10.64.0.0/16", "")})
	ctr := nstest.Container(b, host)
	b.ReportAllocs()
	var m medianOf
	for b.Loop() {
		t0 := time.Now()
		if _, err := n.Attach(b.Context(), EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}); err != nil {
			b.Fatal(err)
		}
		if err := n.Detach(b.Context(), "bench"); err != nil {
			b.Fatal(err)
		}
		m.add(t0)
	}
	m.report(b)
}

// BenchmarkAttach500 attaches 500 containers to one network, one after the
// other, and reports the mean attach time of the first 100 and of the last
// 100: equal figures show that the cost of an attach does not grow with the
// number of containers attached. The namespaces are made beforehand and the
// detaches afterwards are not timed.
func BenchmarkAttach500(b *testing.B) {
	const count = 500
	host := nstest.Host(b)
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Subnets: subnet("10.64.0.0/16", "")})
	ctrs := make([]*netns.NS, count)
	for i := range ctrs {
		ctr, err := netns.New()
		if err != nil {
			b.Fatal(err)
		}
		defer ctr.Close()
		ctrs[i] = ctr
	}
	var first, last time.Duration
	runs := 0
	for b.Loop() {
		for i, ctr := range ctrs {
			t0 := time.Now()
			if _, err := n.Attach(b.Context(), EndpointConfig{ID: fmt.Sprint(i), NS: ctr, DefaultRoute: true}); err != nil {
				b.Fatal(err)
			}
			switch d := time.Since(t0); {
			case i < 100:
				first += d
			case i >= count-100:
				last += d
			}
		}
		b.StopTimer()
		detachAll(b, n, count)
		b.StartTimer()
		runs++
	}
	b.ReportMetric(float64(first.Nanoseconds())/float64(100*runs), "ns/attach-first-100")
	b.ReportMetric(float64(last.Nanoseconds())/float64(100*runs), "ns/attach-last-100")
	b.ReportMetric(0, "ns/op")
}

func detachAll(b *testing.B, n *Network, count int) {
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			if err := n.Detach(context.Background(), fmt.Sprint(i)); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
}

// BenchmarkDetach detaches one container (attached beforehand, not timed).
// Most of it is the kernel unregistering the veth pair.
func BenchmarkDetach(b *testing.B) {
	host := nstest.Host(b)
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Subnets: subnet("10.64.0.0/16", "")})
	ctr := nstest.Container(b, host)
	b.ReportAllocs()
	var m medianOf
	for b.Loop() {
		b.StopTimer()
		if _, err := n.Attach(b.Context(), EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := n.Detach(b.Context(), "bench"); err != nil {
			b.Fatal(err)
		}
		m.add(t0)
	}
	m.report(b)
}
