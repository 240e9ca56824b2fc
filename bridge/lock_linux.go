package bridge

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
	return fmt.Sprintf("netns-%d-%d", id.Dev, id.Ino)
}

// lockNetwork takes the host's lock (shared) and network name's, and
// returns the function that gives both back (removing the network's lock
// file if remove).
func lockNetwork(host *netns.NS, name string, exclusive bool) (func(remove bool), error) {
	return lockPath(host, false, "bridge."+name, exclusive)
}

// lockEndpointFile takes the host's and the network's locks (shared) and
// the endpoint's (exclusive).
func lockEndpointFile(host *netns.NS, network, id string) (func(remove bool), error) {
	return lockPath(host, false, "bridge."+network, false, "bridge."+network+".ep."+id, true)
}

// lockHost takes the host's lock exclusive, as GC does.
func lockHost(host *netns.NS) (func(remove bool), error) {
	return lockPath(host, true)
}

// lockPath takes the host's lock (exclusive or not) and then each of the
// keys (string, exclusive bool pairs) under it.
func lockPath(host *netns.NS, hostExclusive bool, keys ...any) (func(remove bool), error) {
	base := hostKey(host)
	held := []*keylock.FileLock{}
	release := func(remove bool) {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock(remove && i == len(held)-1 && i > 0)
		}
	}
	l, err := keylock.File(base, hostExclusive)
	if err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	held = append(held, l)
	for i := 0; i+1 < len(keys); i += 2 {
		l, err := keylock.File(base+"."+keys[i].(string), keys[i+1].(bool))
		if err != nil {
			release(false)
			return nil, fmt.Errorf("bridge: %w", err)
		}
		held = append(held, l)
	}
	return release, nil
}
