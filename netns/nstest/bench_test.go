//go:build linux

package nstest_test

import (
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// benchFixture measures set-up, cleanup and leak checks of what fixture
// makes, per iteration, and reports the median too.
func benchFixture(b *testing.B, fixture func(t testing.TB)) {
	nstest.Require(b)
	var times []time.Duration
	for b.Loop() {
		start := time.Now()
		rec := &recorder{TB: b}
		fixture(rec)
		if got := rec.finish(); got != "" {
			b.Fatal(got)
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(times[len(times)*9/10].Microseconds())/1000, "p90-ms")
	b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkHost: a sandbox host.
//
//	go test -run '^$' -bench . -benchtime 20x ./netns/nstest/
func BenchmarkHost(b *testing.B) {
	benchFixture(b, func(t testing.TB) { nstest.Host(t) })
}

// BenchmarkHostContainer: a host and a container.
func BenchmarkHostContainer(b *testing.B) {
	benchFixture(b, func(t testing.TB) { nstest.Container(t, nstest.Host(t)) })
}

// BenchmarkOutside: a host with an outside.
func BenchmarkOutside(b *testing.B) {
	benchFixture(b, func(t testing.TB) { nstest.NewOutside(t, nstest.Host(t)) })
}

// BenchmarkUnderlay3: three hosts on an underlay.
func BenchmarkUnderlay3(b *testing.B) {
	benchFixture(b, func(t testing.TB) { nstest.Underlay(t, 3) })
}

// BenchmarkBareNamespace is the floor under the fixtures: creating and
// closing a namespace (netns.New, Close), no lo, no checks.
func BenchmarkBareNamespace(b *testing.B) {
	benchFixture(b, func(t testing.TB) {
		ns, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		ns.Close()
	})
}
