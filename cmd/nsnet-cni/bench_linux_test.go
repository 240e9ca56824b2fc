package main

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns/nstest"
)

// BenchmarkAdd times ADD (and DEL) through libcni, the exec of the plugin
// binary included, of 100 containers on one bridge network with
// masquerade and one published port each (what peerbench's cni_attach
// does with CNI's bridge + host-local + portmap). The daemon is started
// by a warm-up ADD before the timing. version-median-ms is the floor: a
// VERSION call, the same exec without any work, timed after each ADD.
//
//	go test -run '^$' -bench Add -benchtime 1x -count 3 ./cmd/nsnet-cni/
func BenchmarkAdd(b *testing.B) {
	const N = 100
	host := nstest.Host(b)
	n := newNode(b, host)
	list := n.netList("tbench", map[string]any{"subnets": []map[string]string{{"subnet": "10.100.0.0/16"}}})
	ctrs := make([]*ctr, N)
	for i := range ctrs {
		ctrs[i] = n.container(fmt.Sprintf("bench%03d", i), map[string]any{"portMappings": []map[string]any{
			{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}}})
	}
	warm := n.container("warm", nil)
	n.add(list, warm)
	n.del(list, warm)
	var adds, dels, vers []time.Duration
	for b.Loop() {
		for _, c := range ctrs {
			t0 := time.Now()
			n.add(list, c)
			adds = append(adds, time.Since(t0))
			// The floor: libcni's exec of the plugin for VERSION, which
			// does no work, at the same moment.
			t0 = time.Now()
			if _, err := n.cni.GetVersionInfo(b.Context(), "nsnet-cni"); err != nil {
				b.Fatal(err)
			}
			vers = append(vers, time.Since(t0))
		}
		for _, c := range ctrs {
			t0 := time.Now()
			n.del(list, c)
			dels = append(dels, time.Since(t0))
		}
	}
	report := func(name string, ds []time.Duration) {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, name+"-median-ms")
		b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds())/1000, name+"-p99-ms")
	}
	report("add", adds)
	report("del", dels)
	report("version", vers)
}
