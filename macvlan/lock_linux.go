package macvlan

import (
	"fmt"

	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/netns"
)

// Locks, across goroutines and processes (lock files, see keylock.File):
//
//   - the host's, shared by every call below and taken exclusive by GC, so
//     that GC never sees a call's objects half made;
//   - a network's, exclusive for New and Delete, shared for Attach and
//     Detach, so that no attach lands on a network being deleted;
//   - an endpoint's, exclusive for its Attach and Detach.
//
// Each is taken in that order and held from the check to the act.

func hostKey(host *netns.NS) string {
	id := host.ID()
	return keylock.HostKey(id.Dev, id.Ino)
}

func netKey(host *netns.NS, name string) string { return hostKey(host) + ".macvlan." + name }

// lockNetwork takes the host's lock (shared) and network name's, and
// returns the function that gives both back (removing the network's lock
// file if remove).
func lockNetwork(host *netns.NS, name string, exclusive bool) (func(remove bool), error) {
	return lock(keylock.Key{Name: hostKey(host)}, keylock.Key{Name: netKey(host, name), Exclusive: exclusive})
}

// lockEndpointFile takes the host's and the network's locks (shared) and
// the endpoint's (exclusive).
func lockEndpointFile(host *netns.NS, network, id string) (func(remove bool), error) {
	return lock(keylock.Key{Name: hostKey(host)}, keylock.Key{Name: netKey(host, network)},
		keylock.Key{Name: netKey(host, network) + ".ep." + id, Exclusive: true})
}

// lockHost takes the host's lock exclusive, as GC does.
func lockHost(host *netns.NS) (func(remove bool), error) {
	return lock(keylock.Key{Name: hostKey(host), Exclusive: true})
}

func lock(keys ...keylock.Key) (func(remove bool), error) {
	unlock, err := keylock.Nested(keys...)
	if err != nil {
		return nil, fmt.Errorf("macvlan: %w", err)
	}
	return unlock, nil
}
