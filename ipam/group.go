package ipam

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// group commits requests in batches: while one goroutine (the leader)
// commits, the requests that arrive queue up, and when it is done it makes
// the first of them the next leader, which commits them all, so that
// concurrent callers share one store write (one fsync, one etcd
// transaction). The leader is one of the callers; there is no background
// goroutine.
//
// A caller that finds no leader takes no lock and allocates nothing: one
// atomic swap to lead, one to stop. That is the memory store's hot path.
type group[T any] struct {
	// state is 1 while there is a leader, plus 2 per call in pending. A
	// call queues only while there is a leader, and a leader stops only
	// when none is queued, so a caller never waits without a leader to
	// wake it.
	state atomic.Int64

	mu      sync.Mutex
	pending []*call[T] // in arrival order
	batch   []*call[T] // the leader's, reused
	self    call[T]    // the leader's own call when it did not queue
}

type call[T any] struct {
	req  T
	err  error
	wake chan struct{} // 1-buffered: committed, or made leader
	lead bool          // woken to lead, not committed
}

const (
	leading = 1
	queued  = 2
)

func newGroup[T any]() *group[T] { return &group[T]{} }

// do has req committed, by this goroutine or another, and returns req as
// commit left it (results go there) and the error commit set on it.
// commit gets the requests in arrival order and sets each call's err. If
// ctx ends while req waits, do returns ctx's error; a request already
// being committed may still take effect.
func (g *group[T]) do(ctx context.Context, req T, commit func(context.Context, []*call[T])) (T, error) {
	if err := ctx.Err(); err != nil {
		return req, err
	}
	if g.state.CompareAndSwap(0, leading) {
		g.self.req = req
		return g.lead(ctx, &g.self, commit)
	}
	own := &call[T]{req: req, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	for {
		s := g.state.Load()
		if s&leading == 0 {
			if g.state.CompareAndSwap(s, s|leading) {
				g.mu.Unlock()
				return g.lead(ctx, own, commit)
			}
		} else if g.state.CompareAndSwap(s, s+queued) {
			break
		}
	}
	g.pending = append(g.pending, own)
	g.mu.Unlock()
	select {
	case <-own.wake:
	case <-ctx.Done():
		g.mu.Lock()
		if i := slices.Index(g.pending, own); i >= 0 {
			g.pending = slices.Delete(g.pending, i, i+1)
			g.state.Add(-queued)
			g.mu.Unlock()
			return req, ctx.Err()
		}
		g.mu.Unlock()
		<-own.wake // in a batch, or made leader: wait for which
	}
	if own.lead {
		return g.lead(ctx, own, commit)
	}
	return own.req, own.err
}

// lead runs in the leader: it commits own and the calls queued, wakes
// them, and hands the lead to the first call queued meanwhile, if any.
func (g *group[T]) lead(ctx context.Context, own *call[T], commit func(context.Context, []*call[T])) (T, error) {
	own.lead = false
	batch := append(g.batch[:0], own)
	if g.state.Load() != leading {
		g.mu.Lock()
		batch = append(batch, g.pending...)
		g.state.Add(-queued * int64(len(g.pending)))
		clear(g.pending)
		g.pending = g.pending[:0]
		g.mu.Unlock()
	}
	if err := ctx.Err(); err != nil {
		for _, c := range batch {
			c.err = err
		}
	} else {
		commit(ctx, batch)
	}
	req, err := own.req, own.err
	if own == &g.self {
		g.self = call[T]{}
	}
	if len(batch) == 1 {
		// Put back before the lead goes: the next leader takes it.
		batch[0] = nil
		g.batch = batch[:0]
		if g.state.CompareAndSwap(leading, 0) {
			return req, err
		}
	}

	g.mu.Lock()
	var again []*call[T]
	if ctx.Err() != nil {
		// Only this goroutine's context ended: the calls it failed for
		// that reason go back to the front of the queue.
		for _, c := range batch[1:] {
			if errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded) {
				c.err = nil
				again = append(again, c)
			}
		}
		g.pending = append(again, g.pending...)
		g.state.Add(queued * int64(len(again)))
	}
	for _, c := range batch[1:] {
		if !slices.Contains(again, c) {
			c.wake <- struct{}{}
		}
	}
	clear(batch)
	g.batch = batch[:0]
	if len(g.pending) == 0 {
		g.state.Store(0) // under mu, with nothing queued: nobody else writes it
	} else {
		next := g.pending[0]
		g.pending = slices.Delete(g.pending, 0, 1)
		g.state.Add(-queued)
		next.lead = true
		next.wake <- struct{}{}
	}
	g.mu.Unlock()
	return req, err
}
