package ipam

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// counter is a commit function for group tests: it hands each call the
// next number, and records the batches' sizes.
type counter struct {
	mu      sync.Mutex
	next    int
	batches []int
	hold    chan struct{} // if set, commit waits for it (or ctx)
	entered chan struct{} // if set, commit signals it on entry
}

func (c *counter) commit(ctx context.Context, calls []*call[*int]) {
	if c.entered != nil {
		c.entered <- struct{}{}
	}
	if c.hold != nil {
		select {
		case <-c.hold:
		case <-ctx.Done():
			for _, cl := range calls {
				cl.err = ctx.Err()
			}
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches = append(c.batches, len(calls))
	for _, cl := range calls {
		c.next++
		*cl.req = c.next
	}
}

// recv returns the next error from ch, or fails the test if none comes
// within 10 s: a call the group dropped waits forever.
func recv(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer in 10 s", what)
		return nil
	}
}

// waitState waits until the group's state is s (a leader and so many
// queued calls).
func waitState[T any](t *testing.T, g *group[T], s int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); g.state.Load() != s; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("state %d, want %d", g.state.Load(), s)
		}
	}
}

func TestGroup_everyCallOnce(t *testing.T) {
	g := newGroup[*int]()
	c := &counter{}
	slow := func(ctx context.Context, calls []*call[*int]) {
		time.Sleep(50 * time.Microsecond) // long enough for callers to queue
		c.commit(ctx, calls)
	}
	const goroutines, each = 16, 200
	got := make(chan int, goroutines*each)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				n := new(int)
				req, err := g.do(t.Context(), n, slow)
				if err != nil || req != n {
					t.Errorf("do = %p, %v; want %p, nil", req, err, n)
					return
				}
				got <- *n
			}
		})
	}
	wg.Wait()
	close(got)
	seen := map[int]bool{}
	for n := range got {
		if n == 0 || seen[n] {
			t.Fatalf("number %d handed out twice, or not at all", n)
		}
		seen[n] = true
	}
	if len(seen) != goroutines*each || c.next != goroutines*each {
		t.Fatalf("%d calls answered, %d committed; want %d", len(seen), c.next, goroutines*each)
	}
	batched := 0
	for _, b := range c.batches {
		if b > 1 {
			batched++
		}
	}
	if batched == 0 {
		t.Fatalf("no batch of more than one call in %d commits", len(c.batches))
	}
	if s := g.state.Load(); s != 0 {
		t.Fatalf("state after all calls = %d, want 0", s)
	}
}

// A caller whose context ends while it waits returns at once, and its
// request is not committed.
func TestGroup_waiterCancelled(t *testing.T) {
	g := newGroup[*int]()
	c := &counter{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	leader := make(chan error)
	go func() {
		_, err := g.do(t.Context(), new(int), c.commit)
		leader <- err
	}()
	<-c.entered
	ctx, cancel := context.WithCancel(t.Context())
	waiter := make(chan error)
	n := new(int)
	go func() {
		_, err := g.do(ctx, n, c.commit)
		waiter <- err
	}()
	waitState(t, g, leading+queued)
	cancel()
	if err := recv(t, waiter, "waiter"); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter: %v, want context.Canceled", err)
	}
	close(c.hold)
	if err := recv(t, leader, "leader"); err != nil {
		t.Fatal(err)
	}
	if *n != 0 || c.next != 1 {
		t.Fatalf("cancelled request committed (n=%d, commits=%d)", *n, c.next)
	}
	if s := g.state.Load(); s != 0 {
		t.Fatalf("state = %d, want 0", s)
	}
}

// When the leader's context ends during a commit, the calls it carried for
// others are not failed with its error: the next leader commits them.
func TestGroup_leaderCancelled(t *testing.T) {
	g := newGroup[*int]()
	c := &counter{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	// A first leader holds the lead while two callers queue behind it.
	first := make(chan error)
	go func() {
		_, err := g.do(t.Context(), new(int), c.commit)
		first <- err
	}()
	<-c.entered
	ctx, cancel := context.WithCancel(t.Context())
	second, third := new(int), new(int)
	errs := make(chan error, 2)
	go func() { _, err := g.do(ctx, second, c.commit); errs <- err }()
	waitState(t, g, leading+queued)
	go func() { _, err := g.do(t.Context(), third, c.commit); errs <- err }()
	waitState(t, g, leading+2*queued)
	// The first commits; the second leads a batch of both, and is
	// cancelled while it commits.
	c.hold <- struct{}{}
	if err := recv(t, first, "first"); err != nil {
		t.Fatal(err)
	}
	<-c.entered
	cancel()
	if err := recv(t, errs, "second"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled leader: %v, want context.Canceled", err)
	}
	// The third leads again, alone, and commits.
	select {
	case <-c.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the third call was not committed")
	}
	c.hold <- struct{}{}
	if err := recv(t, errs, "third"); err != nil {
		t.Fatalf("third call: %v", err)
	}
	if *third == 0 || *second != 0 {
		t.Fatalf("second=%d third=%d: want only the third committed", *second, *third)
	}
	if s := g.state.Load(); s != 0 {
		t.Fatalf("state = %d, want 0", s)
	}
}
