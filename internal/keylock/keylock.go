// Package keylock serialises work on one key (an endpoint, say) while work
// on other keys runs at once.
package keylock

import "sync"

// Map holds the keys being worked on. The zero value is ready to use; a
// Map must not be copied after first use.
type Map struct {
	mu   sync.Mutex
	busy map[string]chan struct{} // closed when the key's holder is done
}

// Lock waits until no one holds key, takes it, and returns the function
// that gives it back. A key that no one holds costs nothing to keep.
func (m *Map) Lock(key string) (unlock func()) {
	for {
		m.mu.Lock()
		ch, busy := m.busy[key]
		if !busy {
			if m.busy == nil {
				m.busy = make(map[string]chan struct{})
			}
			ch = make(chan struct{})
			m.busy[key] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.busy, key)
				m.mu.Unlock()
				close(ch)
			}
		}
		m.mu.Unlock()
		<-ch
	}
}
