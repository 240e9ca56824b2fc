package keylock

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLock(t *testing.T) {
	var m Map
	var inA, maxA atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				unlock := m.Lock("a")
				if n := inA.Add(1); n > maxA.Load() {
					maxA.Store(n)
				}
				time.Sleep(10 * time.Microsecond)
				inA.Add(-1)
				unlock()
			}
		})
	}
	// Another key is not held up by "a".
	done := make(chan struct{})
	go func() {
		m.Lock("b")()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("key b waited for key a")
	}
	wg.Wait()
	if maxA.Load() != 1 {
		t.Fatalf("%d holders of one key at once", maxA.Load())
	}
	if len(m.busy) != 0 {
		t.Fatalf("%d keys left held", len(m.busy))
	}
}
