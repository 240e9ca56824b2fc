package macvlan

import (
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns/nstest"
)

// BenchmarkAttachDetach attaches one container (its namespace made
// beforehand) to a macvlan network on a host's uplink and detaches it
// again: the figure of issue 7. Besides the mean (ns/op) it reports the
// median round (ms-median).
func BenchmarkAttachDetach(b *testing.B) {
	host := nstest.Underlay(b, 1).Hosts[0].NS
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Parent: "eth0", Subnets: s10()})
	ctr := nstest.Container(b, host)
	ep := EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}
	var rounds []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if _, err := n.Attach(b.Context(), ep); err != nil {
			b.Fatal(err)
		}
		if err := n.Detach(b.Context(), "bench", ctr); err != nil {
			b.Fatal(err)
		}
		rounds = append(rounds, time.Since(start))
	}
	slices.Sort(rounds)
	b.ReportMetric(float64(rounds[len(rounds)/2])/float64(time.Millisecond), "ms-median")
}

// BenchmarkAttach times the attach alone (the detach after each is not
// timed).
func BenchmarkAttach(b *testing.B) {
	host := nstest.Underlay(b, 1).Hosts[0].NS
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Parent: "eth0", Subnets: s10()})
	ctr := nstest.Container(b, host)
	ep := EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := n.Attach(b.Context(), ep); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := n.Detach(b.Context(), "bench", ctr); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkDetach times the detach alone (the attach before each is not
// timed): the kernel's unregistering of the interface, the IPAM release.
func BenchmarkDetach(b *testing.B) {
	host := nstest.Underlay(b, 1).Hosts[0].NS
	n := newNet(b, host, newAlloc(b), Config{Name: "bench", Parent: "eth0", Subnets: s10()})
	ctr := nstest.Container(b, host)
	ep := EndpointConfig{ID: "bench", NS: ctr, DefaultRoute: true}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if _, err := n.Attach(b.Context(), ep); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := n.Detach(b.Context(), "bench", ctr); err != nil {
			b.Fatal(err)
		}
	}
}
