package keylock

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestPart: a part's exclusive lock has one holder at a time (each holder
// with a descriptor of its own, as another process would have), other
// parts are held at the same time, and the whole key's exclusive lock
// waits for every part's holder.
func TestPart(t *testing.T) {
	key := fmt.Sprintf("test-part-%d", os.Getpid())
	var in, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				unlock, err := Nested(Key{Name: key}, Key{Part: "ep.a", Exclusive: true})
				if err != nil {
					t.Error(err)
					return
				}
				if n := in.Add(1); n > most.Load() {
					most.Store(n)
				}
				time.Sleep(50 * time.Microsecond)
				in.Add(-1)
				unlock(true) // a part has no file: the key's stays
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one part at once, want 1", most.Load())
	}

	a, err := Nested(Key{Name: key}, Key{Part: "ep.a", Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Nested(Key{Name: key}, Key{Part: "ep.b", Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	// The whole key is not to be had, without waiting, while a part is
	// held; it is once none is.
	f, err := os.Open(filepath.Join(lockDirOf(t, key), key))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a(false)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("the key's exclusive lock while a part is held: %v, want EWOULDBLOCK", err)
	}
	b(false)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("the key's exclusive lock once no part is held: %v", err)
	}
}

func lockDirOf(t *testing.T, key string) string {
	l, err := File(key, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock(false)
	return filepath.Dir(l.Path())
}
