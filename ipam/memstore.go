package ipam

import (
	"context"
	"sort"
	"strings"
)

// MemoryStore is a Store that keeps everything in memory, for tests and for
// programs whose allocations need not outlive them. Its Watch replays the
// last 4096 events; Compact drops them earlier, to test what a watcher does
// with ErrCompacted. Safe for concurrent use.
type MemoryStore struct {
	// hub.mu guards rev and keys too: a CAS takes one lock, not one for the
	// keys and another to publish. (Each hold is a map access or two, too
	// short for an RWMutex to pay off.)
	rev  int64
	keys map[string]KV
	hub  *hub
}

// NewMemoryStore returns an empty MemoryStore at revision 0.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{keys: make(map[string]KV), hub: newHub(0)}
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, key string) (KV, error) {
	if err := s.usable(); err != nil {
		return KV{}, err
	}
	if err := ctx.Err(); err != nil {
		return KV{}, err
	}
	s.hub.mu.Lock()
	kv, ok := s.keys[key]
	s.hub.mu.Unlock()
	if !ok {
		return KV{}, ErrNotFound
	}
	return kv, nil
}

// List implements Store.
func (s *MemoryStore) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	if err := s.usable(); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.hub.mu.Lock()
	var kvs []KV
	for k, kv := range s.keys {
		if strings.HasPrefix(k, prefix) {
			kvs = append(kvs, kv)
		}
	}
	rev := s.rev
	s.hub.mu.Unlock()
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	return kvs, rev, nil
}

// CAS implements Store.
func (s *MemoryStore) CAS(ctx context.Context, ops ...Op) (int64, error) {
	if err := s.usable(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	if s.keys == nil {
		return 0, ErrClosed
	}
	for _, op := range ops {
		if s.keys[op.Key].Rev != op.Rev {
			return 0, ErrConflict
		}
	}
	s.rev++
	var few [4]Event // the usual CAS has one to three ops; publish copies evs
	evs := few[:0]
	for _, op := range ops {
		if op.Delete {
			if _, ok := s.keys[op.Key]; ok {
				delete(s.keys, op.Key)
				evs = append(evs, Event{Key: op.Key, Rev: s.rev, Delete: true})
			}
			continue
		}
		s.keys[op.Key] = KV{Key: op.Key, Value: op.Value, Rev: s.rev}
		evs = append(evs, Event{Key: op.Key, Value: op.Value, Rev: s.rev})
	}
	s.hub.publishLocked(evs)
	return s.rev, nil
}

// Watch implements Store.
func (s *MemoryStore) Watch(ctx context.Context, prefix string, after int64) <-chan Event {
	if err := s.usable(); err != nil {
		ch := make(chan Event, 1)
		ch <- Event{Err: err}
		close(ch)
		return ch
	}
	return s.hub.watch(ctx, prefix, after)
}

// usable returns a *ValidationError for a nil or zero MemoryStore.
func (s *MemoryStore) usable() error {
	if s == nil || s.hub == nil {
		return invalid("MemoryStore", nil, "a nil or zero MemoryStore: get one from NewMemoryStore")
	}
	return nil
}

// Compact forgets the events up to rev: a Watch that starts before it gets
// a *CompactedError. Like `etcdctl compact REV`.
func (s *MemoryStore) Compact(rev int64) {
	if s.usable() == nil {
		s.hub.compact(rev)
	}
}

// Close implements Store; a MemoryStore holds nothing to release. Watches
// end with their contexts.
func (s *MemoryStore) Close() error { return nil }
