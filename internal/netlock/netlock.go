//go:build linux

// Package netlock holds the locks of a host's networks and endpoints,
// across goroutines and processes (lock files, see keylock.File), for each
// kind of network (bridge, macvlan):
//
//   - the host's, shared by every call below and taken exclusive by GC, so
//     that GC never sees a call's objects half made;
//   - a network's, exclusive for New and Delete, shared for Attach and
//     Detach, so that no attach lands on a network being deleted;
//   - an endpoint's, exclusive for its Attach and Detach.
//
// Each is taken in that order and held from the check to the act.
package netlock

import (
	"fmt"

	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/netns"
)

// Kind is a kind of network: "bridge", "macvlan". Its locks are apart from
// the other kinds', under the same host lock.
type Kind string

// HostKey is the name of host's lock.
func HostKey(host *netns.NS) string {
	id := host.ID()
	return keylock.HostKey(id.Dev, id.Ino)
}

// Prefix is what the names of k's locks on host start with.
func (k Kind) Prefix(host *netns.NS) string { return HostKey(host) + "." + string(k) }

func (k Kind) netKey(host *netns.NS, name string) string { return k.Prefix(host) + "." + name }

// Network takes the host's lock (shared) and network name's, and returns
// the function that gives both back (removing the network's lock file if
// remove).
func (k Kind) Network(host *netns.NS, name string, exclusive bool) (func(remove bool), error) {
	return k.lock(keylock.Key{Name: HostKey(host)}, keylock.Key{Name: k.netKey(host, name), Exclusive: exclusive})
}

// Endpoint takes the host's and the network's locks (shared) and the
// endpoint's (exclusive): a part of the network's lock file (see
// keylock.FileLock.LockPart), so that no file is made or removed per
// endpoint; remove is ignored.
func (k Kind) Endpoint(host *netns.NS, network, id string) (func(remove bool), error) {
	return k.lock(keylock.Key{Name: HostKey(host)}, keylock.Key{Name: k.netKey(host, network)},
		keylock.Key{Part: "ep." + id, Exclusive: true})
}

// Host takes the host's lock exclusive, as GC does.
func (k Kind) Host(host *netns.NS) (func(remove bool), error) {
	return k.lock(keylock.Key{Name: HostKey(host), Exclusive: true})
}

func (k Kind) lock(keys ...keylock.Key) (func(remove bool), error) {
	unlock, err := keylock.Nested(keys...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k, err)
	}
	return unlock, nil
}
