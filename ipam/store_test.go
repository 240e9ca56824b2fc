package ipam

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// testStore checks the Store contract; every store runs it.
func testStore(t *testing.T, open func(t *testing.T) Store) {
	t.Run("CAS", func(t *testing.T) {
		ctx := t.Context()
		s := open(t)
		if _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of an absent key: err = %v, want ErrNotFound", err)
		}
		r1, err := s.CAS(ctx, Op{Key: "a", Value: []byte("1")}, Op{Key: "b", Value: []byte("2")})
		if err != nil {
			t.Fatalf("CAS create: %v", err)
		}
		if _, err := s.CAS(ctx, Op{Key: "a", Value: []byte("x")}); !errors.Is(err, ErrConflict) {
			t.Fatalf("CAS create of an existing key: err = %v, want ErrConflict", err)
		}
		kv, err := s.Get(ctx, "a")
		if err != nil || string(kv.Value) != "1" || kv.Rev != r1 {
			t.Fatalf("Get(a) = %+v, %v; want 1 at %d", kv, err, r1)
		}
		// All or nothing: one stale revision fails the whole CAS.
		if _, err := s.CAS(ctx, Op{Key: "a", Rev: r1, Value: []byte("1b")}, Op{Key: "b", Rev: r1 - 1, Value: []byte("2b")}); !errors.Is(err, ErrConflict) {
			t.Fatalf("CAS with one stale revision: err = %v, want ErrConflict", err)
		}
		if kv, _ := s.Get(ctx, "a"); string(kv.Value) != "1" {
			t.Fatalf("a failed CAS changed a to %q", kv.Value)
		}
		r2, err := s.CAS(ctx, Op{Key: "a", Rev: r1, Value: []byte("1c")}, Op{Key: "b", Rev: r1, Delete: true})
		if err != nil || r2 <= r1 {
			t.Fatalf("CAS update+delete = %d, %v; want a revision after %d", r2, err, r1)
		}
		if _, err := s.Get(ctx, "b"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted key: err = %v", err)
		}
		// Created again: a new revision, never the old one.
		r3, err := s.CAS(ctx, Op{Key: "b", Value: []byte("again")})
		if err != nil || r3 <= r2 {
			t.Fatalf("recreate = %d, %v", r3, err)
		}
		s.CAS(ctx, Op{Key: "c/1", Value: []byte("c1")})
		s.CAS(ctx, Op{Key: "c/2", Value: []byte("c2")})
		kvs, rev, err := s.List(ctx, "c/")
		if err != nil || len(kvs) != 2 || kvs[0].Key != "c/1" || kvs[1].Key != "c/2" || rev < kvs[1].Rev {
			t.Fatalf("List(c/) = %+v, %d, %v", kvs, rev, err)
		}
	})

	t.Run("ConcurrentCAS", func(t *testing.T) {
		// A counter incremented by 8 goroutines: none is lost.
		ctx := t.Context()
		s := open(t)
		const workers, each = 8, 25
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range each {
					for {
						kv, err := s.Get(ctx, "n")
						if err != nil && !errors.Is(err, ErrNotFound) {
							t.Error(err)
							return
						}
						var n int
						fmt.Sscan(string(kv.Value), &n)
						_, err = s.CAS(ctx, Op{Key: "n", Rev: kv.Rev, Value: fmt.Append(nil, n+1)})
						if err == nil {
							break
						}
						if !errors.Is(err, ErrConflict) {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		kv, _ := s.Get(ctx, "n")
		if string(kv.Value) != fmt.Sprint(workers*each) {
			t.Errorf("counter = %s, want %d", kv.Value, workers*each)
		}
	})

	t.Run("Watch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		s := open(t)
		r0, _ := s.CAS(ctx, Op{Key: "w/a", Value: []byte("1")})
		_, start, _ := s.List(ctx, "w/")
		ch := s.Watch(ctx, "w/", start)
		r1, _ := s.CAS(ctx, Op{Key: "w/b", Value: []byte("2")})
		s.CAS(ctx, Op{Key: "other", Value: []byte("x")})
		r2, _ := s.CAS(ctx, Op{Key: "w/a", Rev: r0, Delete: true})
		want := []Event{{Key: "w/b", Value: []byte("2"), Rev: r1}, {Key: "w/a", Rev: r2, Delete: true}}
		for i, w := range want {
			select {
			case ev := <-ch:
				if ev.Err != nil || ev.Key != w.Key || string(ev.Value) != string(w.Value) || ev.Rev != w.Rev || ev.Delete != w.Delete {
					t.Fatalf("event %d = %+v, want %+v", i, ev, w)
				}
			case <-ctx.Done():
				t.Fatalf("event %d: timed out", i)
			}
		}
		// From the past: replays.
		past := s.Watch(ctx, "w/", r0-1)
		if ev := <-past; ev.Key != "w/a" || ev.Rev != r0 {
			t.Errorf("watch from %d: first event %+v", r0-1, ev)
		}
		cancel()
		for range ch {
		}
	})
}

func TestMemoryStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store { return NewMemoryStore() })
}

func TestMemoryStore_compacted(t *testing.T) {
	ctx := t.Context()
	s := NewMemoryStore()
	var rev int64
	for i := range 5 {
		rev, _ = s.CAS(ctx, Op{Key: fmt.Sprint("k", i), Value: []byte("v")})
	}
	s.Compact(rev - 1)
	ev := <-s.Watch(ctx, "", 1)
	var ce *CompactedError
	if !errors.Is(ev.Err, ErrCompacted) || !errors.As(ev.Err, &ce) {
		t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", ev)
	}
	// Re-list and watch from the revision List gave.
	_, lrev, _ := s.List(ctx, "")
	ch := s.Watch(ctx, "", lrev)
	r, _ := s.CAS(ctx, Op{Key: "new", Value: []byte("v")})
	if ev := <-ch; ev.Err != nil || ev.Rev != r {
		t.Fatalf("after re-list: %+v", ev)
	}
}

func TestWatch_slowWatcherEnds(t *testing.T) {
	ctx := t.Context()
	s := NewMemoryStore()
	ch := s.Watch(ctx, "", 0)
	// The watcher's goroutine may take up to watcherBuffer events off the
	// queue before it blocks on the unread channel; twice that and more is
	// sure to overflow what is left.
	for i := range 2*watcherBuffer + 200 {
		s.CAS(ctx, Op{Key: fmt.Sprint("k", i), Value: []byte("v")})
	}
	var last Event
	n := 0
	for ev := range ch {
		last = ev
		n++
	}
	if !errors.Is(last.Err, ErrCompacted) {
		t.Fatalf("a watcher that fell behind ended with %+v after %d events, want ErrCompacted", last, n)
	}
}
