package ipam

import (
	"context"
	"errors"
	"sync"
)

// group commits requests in batches: while one goroutine commits, the
// requests that arrive queue up, and the next goroutine to commit takes them
// all, so that concurrent callers share one store write (one fsync, one etcd
// transaction). The caller that commits is one of the callers; there is no
// background goroutine.
type group[T any] struct {
	sem     chan struct{} // held by the goroutine committing
	mu      sync.Mutex
	pending []*call[T]
	batch   []*call[T] // reused by the holder of sem
}

type call[T any] struct {
	req   T
	err   error
	done  chan struct{} // closed when committed; nil for the committer's own call
	taken bool          // in a batch being committed
}

func newGroup[T any]() *group[T] { return &group[T]{sem: make(chan struct{}, 1)} }

// do has req committed, by this goroutine or another, and returns the error
// commit set on it. commit gets the requests in arrival order and sets each
// call's err (and whatever results req points to). If ctx ends while req
// waits, do returns ctx's error; a request already being committed may still
// take effect.
func (g *group[T]) do(ctx context.Context, req T, commit func(context.Context, []*call[T])) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	own := &call[T]{req: req}
	select {
	case g.sem <- struct{}{}:
		return g.commit(ctx, own, commit)
	default:
	}
	own.done = make(chan struct{})
	g.mu.Lock()
	g.pending = append(g.pending, own)
	g.mu.Unlock()
	for {
		select {
		case <-own.done:
			return own.err
		case g.sem <- struct{}{}:
			g.mu.Lock()
			taken := own.taken
			g.mu.Unlock()
			if taken { // committed (or being committed) by the one before
				<-g.sem
				<-own.done
				return own.err
			}
			return g.commit(ctx, own, commit)
		case <-ctx.Done():
			g.mu.Lock()
			if !own.taken {
				for i, c := range g.pending {
					if c == own {
						g.pending = append(g.pending[:i], g.pending[i+1:]...)
						break
					}
				}
				g.mu.Unlock()
				return ctx.Err()
			}
			g.mu.Unlock()
			return ctx.Err()
		}
	}
}

// commit runs with sem held: it takes the pending requests, and own if it
// was not queued, commits them, hands out the results and returns own's.
func (g *group[T]) commit(ctx context.Context, own *call[T], commit func(context.Context, []*call[T])) error {
	g.mu.Lock()
	batch := g.batch[:0]
	for _, c := range g.pending {
		c.taken = true
		batch = append(batch, c)
	}
	clear(g.pending)
	g.pending = g.pending[:0]
	if own.done == nil {
		own.taken = true
		batch = append(batch, own)
	}
	g.mu.Unlock()

	commit(ctx, batch)

	cancelled := ctx.Err() != nil
	g.mu.Lock()
	for _, c := range batch {
		if c == own {
			continue
		}
		if cancelled && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) && c.done != nil {
			// Only this goroutine's context ended: let another try again.
			c.taken, c.err = false, nil
			g.pending = append(g.pending, c)
			continue
		}
		close(c.done)
	}
	clear(batch)
	g.batch = batch[:0]
	g.mu.Unlock()
	<-g.sem
	return own.err
}
