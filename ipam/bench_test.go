package ipam

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkAllocateRelease measures one Allocate and one Release, each
// committed to the store, per iteration. With the file and etcd stores both
// are durable when they return. The "8callers" runs are 8 goroutines at once
// on one pool, whatever GOMAXPROCS is; their commits are batched (one write
// and fsync for many callers).
//
//	go test -run '^$' -bench AllocateRelease -benchmem ./ipam/
func BenchmarkAllocateRelease(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) Store
	}{
		{"memory", func(*testing.B) Store { return NewMemoryStore() }},
		{"file", func(b *testing.B) Store { return openFile(b, b.TempDir()) }},
	}
	for _, st := range stores {
		for _, callers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/%dcallers", st.name, callers), func(b *testing.B) {
				a, err := New(st.open(b), Config{})
				if err != nil {
					b.Fatal(err)
				}
				mustPool(b, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.60.0.0/16")}}})
				benchAllocateRelease(b, a, callers)
			})
		}
	}
}

func benchAllocateRelease(b *testing.B, a *Allocator, callers int) {
	ctx := context.Background()
	var next atomic.Int64
	// The pool is read once before the clock starts (in a large pool, that
	// takes longer than many allocations).
	if err := allocRelease(ctx, a, "warm-up"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if callers == 1 {
		for b.Loop() {
			if err := allocRelease(ctx, a, "owner"); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			owner := fmt.Sprintf("owner-%d", next.Add(1))
			for pb.Next() {
				if err := allocRelease(ctx, a, owner); err != nil {
					b.Error(err) // not Fatal: this is not the benchmark's goroutine
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}

func allocRelease(ctx context.Context, a *Allocator, owner string) error {
	if _, err := a.Allocate(ctx, "n", owner); err != nil {
		return err
	}
	return a.Release(ctx, "n", owner)
}

// BenchmarkAllocateReleaseFill is BenchmarkAllocateRelease in a /16 that
// already holds 1%, 50% or 99% of its 65,533 addresses: a write costs the
// keys it changes, whatever the pool holds.
//
//	go test -run '^$' -bench AllocateReleaseFill -benchmem ./ipam/
func BenchmarkAllocateReleaseFill(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) Store
	}{
		{"memory", func(*testing.B) Store { return NewMemoryStore() }},
		{"file", func(b *testing.B) Store { return openFile(b, b.TempDir()) }},
	}
	for _, st := range stores {
		for _, pct := range []int{1, 50, 99} {
			for _, callers := range []int{1, 8} {
				b.Run(fmt.Sprintf("%s/%dpct/%dcallers", st.name, pct, callers), func(b *testing.B) {
					s := st.open(b)
					FillPool(b, s, pct)
					a, err := New(s, Config{})
					if err != nil {
						b.Fatal(err)
					}
					benchAllocateRelease(b, a, callers)
				})
			}
		}
	}
}

// FillPool writes into s a pool "n", 10.60.0.0/16, with pct percent of its
// addresses allocated: made by an Allocator on a memory store, copied
// over with CASes of at most 100 keys (etcd takes at most 128 per
// transaction).
func FillPool(b testing.TB, s Store, pct int) {
	ctx := context.Background()
	mem := NewMemoryStore()
	a, err := New(mem, Config{})
	if err != nil {
		b.Fatal(err)
	}
	mustPool(b, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.60.0.0/16")}}})
	for i := range 65533 * pct / 100 {
		if _, err := a.Allocate(ctx, "n", fmt.Sprint("fill-", i)); err != nil {
			b.Fatal(err)
		}
	}
	kvs, _, err := mem.List(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	for len(kvs) > 0 {
		n := min(len(kvs), 100)
		ops := make([]Op, n)
		for i, kv := range kvs[:n] {
			ops[i] = Op{Key: kv.Key, Value: kv.Value}
		}
		if _, err := s.CAS(ctx, ops...); err != nil {
			b.Fatal(err)
		}
		kvs = kvs[n:]
	}
}
