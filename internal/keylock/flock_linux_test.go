package keylock

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFile: an exclusive file lock has one holder at a time, also when
// each holder removes the lock's file as it lets go.
func TestFile(t *testing.T) {
	key := fmt.Sprintf("test-%d", os.Getpid())
	var in, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				l, err := File(key, true)
				if err != nil {
					t.Error(err)
					return
				}
				if n := in.Add(1); n > most.Load() {
					most.Store(n)
				}
				time.Sleep(50 * time.Microsecond)
				in.Add(-1)
				l.Unlock(true)
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders at once, want 1", most.Load())
	}
}
