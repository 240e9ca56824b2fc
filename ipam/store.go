package ipam

import (
	"context"
	"strings"
	"sync"
)

// Store is where an Allocator keeps its state: keys mapped to values, each
// with the revision of its last change, changed only by compare-and-swap.
// Three implementations come with ipam: NewMemoryStore (tests, one process),
// OpenFileStore (one machine, several processes; the embedded default) and
// etcdstore.New in package ipam/etcdstore (several hosts). The overlay package uses the same interface.
//
// Revisions are store-wide and increase with every successful CAS, as in
// etcd: all the keys one CAS writes get the same new revision, and a key that
// was deleted and created again never has its old revision back.
//
// A Store must be safe for concurrent use. Values handed to CAS and returned
// by Get and List are shared, not copied: callers must not modify them.
type Store interface {
	// Get returns the key's value and revision, or an error matching
	// ErrNotFound if the key does not exist. The read is linearizable: it
	// sees every CAS acknowledged before it started.
	Get(ctx context.Context, key string) (KV, error)

	// List returns the keys that start with prefix, in key order, and the
	// store's revision at the time of the read, to Watch after it.
	List(ctx context.Context, prefix string) ([]KV, int64, error)

	// CAS applies all ops at once if each op's key is at the op's Rev (0:
	// the key must not exist), and returns the new revision. If any key is
	// at another revision it applies nothing and returns an error matching
	// ErrConflict. A nil error means the change is durable (for the file
	// store: written to its log and fdatasynced; for etcd: committed by a
	// transaction that compared the revisions).
	CAS(ctx context.Context, ops ...Op) (int64, error)

	// Watch reports the changes to keys that start with prefix made at
	// revisions after the given one, in order, until ctx is done; then the
	// channel is closed. A watch that cannot go on sends one last Event
	// with Err set, then closes: an error matching ErrCompacted means the
	// revisions asked for are gone, and the caller must List again and
	// watch from the revision List returned.
	Watch(ctx context.Context, prefix string, after int64) <-chan Event

	// Close releases what the store holds (files, watches). It does not
	// close an etcd client handed to etcdstore.New.
	Close() error
}

// KV is a key, its value and the revision at which it was last written.
type KV struct {
	Key   string
	Value []byte
	Rev   int64
}

// Op is one key of a CAS: the revision the key must be at (0: absent), and
// the value to write, or Delete.
type Op struct {
	Key    string
	Rev    int64
	Value  []byte
	Delete bool
}

// Event is one change seen by a Watch: a Put (Value set) or a Delete of
// Key at revision Rev; or, as the last event of a watch that ended by
// itself, Err.
type Event struct {
	Key    string
	Value  []byte // nil for a delete
	Rev    int64
	Delete bool
	Err    error
}

// hub keeps the recent events of a memory or file store and hands them to
// watchers. Its history is bounded: a watch that starts before what it holds
// gets a *CompactedError, and so does a watcher that falls too far behind.
type hub struct {
	mu        sync.Mutex
	history   []Event // ascending Rev
	compacted int64   // events up to this revision are no longer in history
	max       int     // history length kept (at least; up to twice)
	watchers  map[*watcher]struct{}
}

const (
	hubHistory    = 4096 // events a store keeps for watches that start in the past
	watcherBuffer = 4096 // events a slow watcher may fall behind before it is ended
)

type watcher struct {
	prefix string
	queue  []Event
	wake   chan struct{} // 1-buffered
	failed bool          // queue overflowed: the watch ends with CompactedError
}

func newHub(rev int64) *hub {
	return &hub{compacted: rev, max: hubHistory, watchers: make(map[*watcher]struct{})}
}

// publish records evs (ascending revisions) and queues them for watchers.
func (h *hub) publish(evs []Event) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.publishLocked(evs)
}

// publishLocked is publish for a caller that holds h.mu.
func (h *hub) publishLocked(evs []Event) {
	if len(evs) == 0 {
		return
	}
	h.history = append(h.history, evs...)
	// Trim to max once history holds twice that: a copy per max events,
	// not per publish.
	if n := len(h.history) - h.max; n > h.max {
		h.compacted = h.history[n-1].Rev
		h.history = append(h.history[:0], h.history[n:]...)
	}
	if len(h.watchers) == 0 {
		return // the usual case: no watch open
	}
	for w := range h.watchers {
		if w.failed {
			continue
		}
		added := false
		for _, ev := range evs {
			if strings.HasPrefix(ev.Key, w.prefix) {
				w.queue = append(w.queue, ev)
				added = true
			}
		}
		if len(w.queue) > watcherBuffer {
			w.failed = true
			w.queue = nil
		}
		if added || w.failed {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// compact drops the history up to rev.
func (h *hub) compact(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev <= h.compacted {
		return
	}
	i := 0
	for i < len(h.history) && h.history[i].Rev <= rev {
		i++
	}
	h.history = append(h.history[:0], h.history[i:]...)
	h.compacted = rev
}

func (h *hub) watch(ctx context.Context, prefix string, after int64) <-chan Event {
	out := make(chan Event, 16)
	h.mu.Lock()
	if after < h.compacted {
		rev := h.compacted
		h.mu.Unlock()
		out <- Event{Err: &CompactedError{Rev: rev + 1}}
		close(out)
		return out
	}
	w := &watcher{prefix: prefix, wake: make(chan struct{}, 1)}
	for _, ev := range h.history {
		if ev.Rev > after && strings.HasPrefix(ev.Key, prefix) {
			w.queue = append(w.queue, ev)
		}
	}
	h.watchers[w] = struct{}{}
	h.mu.Unlock()
	go h.run(ctx, w, out)
	return out
}

func (h *hub) run(ctx context.Context, w *watcher, out chan<- Event) {
	defer func() {
		h.mu.Lock()
		delete(h.watchers, w)
		h.mu.Unlock()
		close(out)
	}()
	for {
		h.mu.Lock()
		q, failed := w.queue, w.failed
		w.queue = nil
		compacted := h.compacted
		h.mu.Unlock()
		if failed {
			select {
			case out <- Event{Err: &CompactedError{Rev: compacted + 1}}:
			case <-ctx.Done():
			}
			return
		}
		for _, ev := range q {
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return
		}
	}
}
