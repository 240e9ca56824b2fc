//go:build linux

package keylock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// dirs are where the lock files of File may live: the first of these that
// this process can write. They are empty files named by their key; a key.s
// file goes when the object it guards does (Unlock(true)).
// When none is writable (an unprivileged user in a user namespace of its
// own, say), locks are this process's only.
var dirs = []string{"/run/nsnet/locks", filepath.Join(os.TempDir(), "nsnet-locks"), fmt.Sprintf("/tmp/nsnet-locks-%d", os.Getuid())}

var (
	dirOnce sync.Once
	dir     string
	dirErr  error
)

// DirEnv names the environment variable that, when set, gives the lock
// directory instead of dirs: nstest sets it to a directory of the test
// binary's own, so that tests leave no lock files on the machine.
const DirEnv = "NSNET_LOCK_DIR"

func lockDir() (string, error) {
	dirOnce.Do(func() {
		ds := dirs
		if d := os.Getenv(DirEnv); d != "" {
			ds = []string{d}
		}
		for _, d := range ds {
			if dirErr = os.MkdirAll(d, 0o700); dirErr == nil {
				if dirErr = unix.Access(d, unix.W_OK); dirErr == nil {
					dir = d
					return
				}
			}
		}
	})
	return dir, dirErr
}

// A FileLock is a lock held on a key across processes (flock on a file
// named by the key): held by one process, or by one goroutine of it, at a
// time (exclusive), or by any number of holders that are all shared. A
// process that dies lets go of its locks.
type FileLock struct {
	f    *os.File
	path string

	local func() // the unlock of a process-local lock, if no directory
}

// local are the process-local locks used when no lock directory is
// writable.
var local = struct {
	sync.Mutex
	m map[string]*sync.RWMutex
}{m: map[string]*sync.RWMutex{}}

func localLock(key string, exclusive bool) *FileLock {
	local.Lock()
	mu, ok := local.m[key]
	if !ok {
		mu = new(sync.RWMutex)
		local.m[key] = mu
	}
	local.Unlock()
	if exclusive {
		mu.Lock()
		return &FileLock{local: mu.Unlock}
	}
	mu.RLock()
	return &FileLock{local: mu.RUnlock}
}

// File waits for key's lock, exclusive or shared, and takes it. key names a
// file in the lock directory: letters, digits, '.', '-', '_' and ':'.
func File(key string, exclusive bool) (*FileLock, error) {
	d, err := lockDir()
	if err != nil {
		return localLock(key, exclusive), nil
	}
	path := filepath.Join(d, key)
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("keylock: %w", err)
		}
		if err := flock(f, how); err != nil {
			f.Close()
			return nil, fmt.Errorf("keylock: %s: %w", path, err)
		}
		// The holder before may have removed the file (Unlock(true))
		// after this open: then the lock is on a file no one else
		// sees, and the lock must be taken again on the new one.
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, fmt.Errorf("keylock: %s: %w", path, err)
		}
		if err := unix.Stat(path, &now); err == nil && now.Ino == held.Ino && now.Dev == held.Dev {
			return &FileLock{f: f, path: path}, nil
		} else if err != nil && !errors.Is(err, unix.ENOENT) {
			f.Close()
			return nil, fmt.Errorf("keylock: %s: %w", path, err)
		}
		f.Close()
	}
}

// Path returns the lock's file, or "" for a process-local lock.
func (l *FileLock) Path() string { return l.path }

// Unlock gives the lock back; with remove, it first removes the lock's
// file (only an exclusive holder may), for a key whose object is gone.
// Unlocking a nil FileLock does nothing.
func (l *FileLock) Unlock(remove bool) {
	if l == nil {
		return
	}
	if l.local != nil {
		l.local()
		return
	}
	if remove {
		os.Remove(l.path)
	}
	l.f.Close() // closing the last descriptor drops the flock
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// Key is one lock of Nested: its name, and whether it is taken exclusive.
type Key struct {
	Name      string
	Exclusive bool
}

// Nested takes the locks of keys, in order, and returns the function that
// gives them back in the reverse order (removing the last one's file if
// remove: its object is gone). nsnet's drivers take a host's lock (shared;
// exclusive for GC), then a network's, then an endpoint's.
func Nested(keys ...Key) (unlock func(remove bool), err error) {
	held := make([]*FileLock, 0, len(keys))
	release := func(remove bool) {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock(remove && i == len(held)-1 && i > 0)
		}
	}
	for _, k := range keys {
		l, err := File(k.Name, k.Exclusive)
		if err != nil {
			release(false)
			return nil, err
		}
		held = append(held, l)
	}
	return release, nil
}

// HostKey is the key of the lock of the host whose namespace has the given
// device and inode numbers (netns.ID).
func HostKey(dev, ino uint64) string { return fmt.Sprintf("netns-%d-%d", dev, ino) }

// RemoveUnder removes the lock files of the keys that start with prefix +
// ".": the caller holds the lock that every holder of those takes first
// (a host's, exclusive), so none is held or waited for.
func RemoveUnder(prefix string) {
	d, err := lockDir()
	if err != nil {
		return
	}
	names, _ := filepath.Glob(filepath.Join(d, prefix+".*"))
	for _, n := range names {
		os.Remove(n)
	}
}
