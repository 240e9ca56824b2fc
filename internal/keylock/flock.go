//go:build linux

package keylock

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
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
	key  string

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
		return &FileLock{local: mu.Unlock, key: key}
	}
	mu.RLock()
	return &FileLock{local: mu.RUnlock, key: key}
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
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) // RDWR: for LockPart's write locks
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
			return &FileLock{f: f, path: path, key: key}, nil
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

// LockPart takes, within the lock l holds (shared, typically), the lock of
// part: a lock of its own for each part, exclusive or shared, across
// processes and across the goroutines of one, without a file of its own
// (an open file description lock, F_OFD_SETLKW, on one byte of l's file
// chosen by a hash of part; two parts whose hashes meet share a lock,
// which only serialises them). It is given back with l. nsnet's drivers
// lock an endpoint this way within its network's lock: no file is made
// and removed per endpoint, which cost 0.1-0.2 ms each on a disk.
func (l *FileLock) LockPart(part string, exclusive bool) error {
	if l == nil {
		return errors.New("keylock: LockPart of a nil lock")
	}
	if l.local != nil {
		pl := localLock(l.key+"\x00"+part, exclusive)
		prev := l.local
		l.local = func() { pl.local(); prev() }
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte(part))
	typ := int16(unix.F_RDLCK)
	if exclusive {
		typ = unix.F_WRLCK
	}
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: int64(h.Sum64() >> 2), Len: 1}
	for {
		err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLKW, &lk)
		if err == nil {
			return nil
		}
		if err != unix.EINTR {
			return fmt.Errorf("keylock: %s: %s: %w", l.path, part, err)
		}
	}
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
// A Key with a Part is the lock of that part within the previous key's
// lock (see FileLock.LockPart), and has no file of its own.
type Key struct {
	Name      string
	Exclusive bool
	Part      string
}

// Nested takes the locks of keys, in order, and returns the function that
// gives them back in the reverse order (removing the last one's file if
// remove: its object is gone). nsnet's drivers take a host's lock (shared;
// exclusive for GC), then a network's, then an endpoint's.
func Nested(keys ...Key) (unlock func(remove bool), err error) {
	held := make([]*FileLock, 0, len(keys))
	part := false // the last key is a part: it has no file to remove
	release := func(remove bool) {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock(remove && !part && i == len(held)-1 && i > 0)
		}
	}
	for _, k := range keys {
		if k.Part != "" {
			if len(held) == 0 {
				return nil, errors.New("keylock: a part lock without a lock before it")
			}
			if err := held[len(held)-1].LockPart(k.Part, k.Exclusive); err != nil {
				release(false)
				return nil, err
			}
			part = true
			continue
		}
		part = false
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
