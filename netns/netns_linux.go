package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultDir is the run directory of named namespaces used by the zero Dir,
// the same that `ip netns` uses.
const DefaultDir = "/var/run/netns"

// ID identifies a namespace: two handles refer to the same namespace exactly
// when their IDs are equal (the device and inode of the nsfs file).
type ID struct {
	Dev uint64
	Ino uint64
}

// String renders the ID the way /proc/PID/ns/net links do: "net:[4026531840]".
func (id ID) String() string { return fmt.Sprintf("net:[%d]", id.Ino) }

// NS is a handle to one network namespace. The zero value is not usable:
// get one from New, Open, OpenPID, Current or Dir.New.
//
// Close releases the handle's descriptor and sockets. It does not delete a
// named namespace (use Delete); an anonymous namespace goes away when its
// last reference (this handle, a process in it, a bind mount) does.
//
// An NS is safe for concurrent use.
type NS struct {
	id   ID
	path string // the bind mount or /proc path it was opened by; "" if anonymous
	name string // the name in its Dir, if named

	mu     sync.RWMutex // guards fd against Close
	fd     int          // -1 once closed
	nl     *netlink.Handle
	nlOnce sync.Mutex

	nftMu sync.Mutex
	nft   *nftables.Conn
}

// ID returns the namespace's identity.
func (ns *NS) ID() ID {
	if ns == nil {
		return ID{}
	}
	return ns.id
}

// usable returns a *ValidationError for a nil NS or a zero one (not made by
// this package: its descriptor would be 0, the process's standard input).
func (ns *NS) usable() error {
	if ns == nil || ns.id == (ID{}) {
		return &ValidationError{Pkg: "netns", Field: "NS", Value: "<nil>", Reason: "a nil or zero NS: get one from New, Open, OpenPID, Current or Dir.New"}
	}
	return nil
}

// Equal reports whether ns and other refer to the same namespace; a caller
// uses it to tell "host mode" (the container's namespace is the host's) from
// the others. A nil NS equals only nil.
func (ns *NS) Equal(other *NS) bool {
	if ns == nil || other == nil {
		return ns == other
	}
	return ns.id == other.id
}

// Name returns the name of a named namespace, or "".
func (ns *NS) Name() string {
	if ns == nil {
		return ""
	}
	return ns.name
}

// Path returns the path the namespace was opened by (its bind mount, or a
// /proc path), or "" for an anonymous namespace made by New.
func (ns *NS) Path() string {
	if ns == nil {
		return ""
	}
	return ns.path
}

// String describes the namespace for messages: its path, or its ID.
func (ns *NS) String() string {
	if ns == nil {
		return "<nil>"
	}
	if ns.path != "" {
		return ns.path
	}
	return ns.id.String()
}

// Fd returns the namespace's file descriptor, or -1 once it is closed. The
// descriptor belongs to ns: do not close it, and do not use it after Close.
func (ns *NS) Fd() int {
	if ns.usable() != nil {
		return -1
	}
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	return ns.fd
}

// Dup returns a second handle to the same namespace, with a descriptor of
// its own: closing one does not affect the other. A container that joins
// another's namespace (Docker's --network container:NAME) is such a handle.
func (ns *NS) Dup() (*NS, error) {
	if err := ns.usable(); err != nil {
		return nil, err
	}
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.fd < 0 {
		return nil, ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(ns.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, ns.opErr("netns.dup", "", err)
	}
	return &NS{id: ns.id, fd: fd, path: ns.path, name: ns.name}, nil
}

// Close releases the handle: the nftables connection, the netlink handle and
// the descriptor. Closing a closed NS returns nil, and so does closing a nil
// or zero NS, which holds nothing.
func (ns *NS) Close() error {
	if ns.usable() != nil {
		return nil
	}
	ns.nftMu.Lock()
	if ns.nft != nil {
		_ = ns.nft.CloseLasting()
		ns.nft = nil
	}
	ns.nftMu.Unlock()
	ns.nlOnce.Lock()
	if ns.nl != nil {
		ns.nl.Close()
		ns.nl = nil
	}
	ns.nlOnce.Unlock()

	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return nil
	}
	err := unix.Close(ns.fd)
	ns.fd = -1
	if err != nil {
		return ns.opErr("netns.close", "", err)
	}
	return nil
}

func (ns *NS) opErr(op, name string, err error) error {
	return &OpError{Op: op, NS: ns.String(), Name: name, Err: err}
}

// New creates an anonymous network namespace, like `unshare --net`, and
// returns a handle to it. The namespace lives as long as something refers to
// it (this handle, a bind mount, a process). Its only link is lo, which is
// DOWN; see NS.LoopbackUp. The calling goroutine's thread is not touched.
func New() (*NS, error) {
	var fd int
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return &OpError{Op: "netns.new", Err: err}
		}
		var err error
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &OpError{Op: "netns.new", Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fromFd(fd, "", "")
}

// fromFd wraps a descriptor known to be a namespace (or checks that it is
// one) into an NS. It takes ownership of fd, closing it on failure.
func fromFd(fd int, path, name string) (*NS, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "netns.open", NS: path, Err: err}
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "netns.open", NS: path, Err: err}
	}
	if sfs.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, &OpError{Op: "netns.open", NS: path, Err: errNotNetNS}
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "netns.open", NS: path, Err: err}
	}
	if typ != unix.CLONE_NEWNET {
		unix.Close(fd)
		return nil, &OpError{Op: "netns.open", NS: path, Err: errNotNetNS}
	}
	return &NS{id: ID{Dev: st.Dev, Ino: st.Ino}, fd: fd, path: path, name: name}, nil
}

var errNotNetNS = errors.New("not a network namespace")

// Open opens a namespace by name in DefaultDir (like `ip netns exec NAME`),
// or by path when the argument contains a '/' (a bind mount such as
// "/run/docker/netns/1a2b", or "/proc/1234/ns/net"). It fails with an error
// matching ErrNotFound when there is no such namespace.
func Open(nameOrPath string) (*NS, error) {
	if strings.Contains(nameOrPath, "/") {
		return openPath(nameOrPath, "")
	}
	return Dir("").Open(nameOrPath)
}

// OpenPID opens the network namespace of process pid, like
// /proc/PID/ns/net. It fails with an error matching ErrNotFound when there
// is no such process.
func OpenPID(pid int) (*NS, error) {
	if pid <= 0 {
		return nil, &ValidationError{Pkg: "netns", Field: "pid", Value: fmt.Sprint(pid), Reason: "not a process ID"}
	}
	return openPath(fmt.Sprintf("/proc/%d/ns/net", pid), "")
}

// processNS is the namespace the process started in, opened while package
// initialisation runs on the main thread, before any code could switch it.
var processNS, processNSErr = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)

// Current opens the namespace the process started in, which is where every
// goroutine not inside NS.Do runs. (It is not read from /proc/self/ns/net,
// which names the main thread's namespace at the time of reading.)
func Current() (*NS, error) {
	if processNSErr != nil {
		return nil, &OpError{Op: "netns.current", Err: processNSErr}
	}
	fd, err := unix.FcntlInt(uintptr(processNS), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, &OpError{Op: "netns.current", Err: err}
	}
	return fromFd(fd, "", "")
}

func openPath(path, name string) (*NS, error) {
	if path == "" {
		return nil, &ValidationError{Pkg: "netns", Field: "path", Value: path, Reason: "empty"}
	}
	// O_NONBLOCK: a FIFO at path must not block the open (fromFd then
	// refuses it as not a namespace).
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &OpError{Op: "netns.open", NS: path, Err: err}
	}
	return fromFd(fd, path, name)
}

// Do runs fn on a new goroutine locked to an OS thread that is in ns, then
// switches the thread back and returns fn's error. A panic in fn is carried
// back and re-raised in the caller's goroutine, after the thread was switched
// back. If the thread cannot be switched back, it is left locked and dies with
// its goroutine, and Do returns an error. fn never runs on the process's
// main thread, which the runtime cannot retire.
//
// fn runs on another goroutine: it must not call t.Fatal, and goroutines it
// starts run in the caller's original namespace, not in ns. Sockets fn opens
// stay in ns after Do returns and can be used from any goroutine: this is how
// nsnet opens every socket it needs in a namespace.
func (ns *NS) Do(fn func() error) error {
	if err := ns.usable(); err != nil {
		return err
	}
	if fn == nil {
		return &ValidationError{Pkg: "netns", Field: "fn", Value: "<nil>", Reason: "no function to run"}
	}
	return onThread(func() error {
		if err := ns.setns(); err != nil {
			return err
		}
		return fn()
	})
}

// onThread runs fn on a new goroutine locked to its OS thread, then puts the
// thread back into the network namespace it was in and unlocks it. fn may
// switch the thread's namespace (setns, unshare). A panic in fn is re-raised
// in the caller's goroutine after the switch back. If the thread cannot be
// switched back, it stays locked, so the runtime retires it with the
// goroutine and it never runs another one; the error says so.
//
// fn never runs on the process's main thread. The runtime cannot retire
// that thread: one left in a foreign namespace would stay there, locked and
// idle, for the life of the process, keeping the namespace alive and
// naming it in /proc/PID/ns/net (which is the main thread's). A goroutine
// that the scheduler happens to start on the main thread keeps that thread
// locked, idle, and starts the work on another goroutine, which therefore
// runs on another thread.
func onThread(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	ch := make(chan result, 1)
	// run locks the thread, runs fn and switches back; it unlocks only
	// if the switch back worked.
	run := func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: &OpError{Op: "netns.do", Err: err}}
			return
		}
		var r result
		func() {
			defer func() {
				if v := recover(); v != nil {
					r.panicked, r.value = true, v
				}
			}()
			r.err = fn()
		}()
		// orig is closed before the result goes out: when Do returns, it
		// holds no descriptor of its own.
		err = switchBack(orig)
		unix.Close(orig)
		if err != nil {
			// Leave the thread locked: the runtime retires it when this
			// goroutine ends.
			r.err = errors.Join(r.err, &OpError{Op: "netns.do", Err: fmt.Errorf("switching the thread back: %w", err)})
			ch <- r
			return
		}
		runtime.UnlockOSThread()
		ch <- r
	}
	go func() {
		runtime.LockOSThread()
		// One unlock for this lock; run's lock stays if it failed, and
		// the thread is retired with this goroutine.
		defer runtime.UnlockOSThread()
		if unix.Gettid() != mainTID {
			run()
			return
		}
		// On the main thread: hold it, so that nothing else runs on it,
		// while a goroutine that therefore runs on another thread does
		// the work.
		done := make(chan struct{})
		go func() { defer close(done); run() }()
		<-done
	}()
	r := <-ch
	if r.panicked {
		panic(r.value)
	}
	return r.err
}

// mainTID is the process's main thread (its thread ID is the process ID).
var mainTID = unix.Getpid()

// switchBack puts the calling thread back into the namespace orig; a test
// replaces it to make the switch back fail.
var switchBack = func(orig int) error { return unix.Setns(orig, unix.CLONE_NEWNET) }

// setns switches the calling (locked) thread into ns.
func (ns *NS) setns() error {
	if err := ns.usable(); err != nil {
		return err
	}
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.fd < 0 {
		return ErrClosed
	}
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		return ns.opErr("netns.do", "", err)
	}
	return nil
}

// Netlink returns a netlink handle whose sockets were opened in ns, so that
// every request made through it acts in ns whatever thread sends it. The
// handle belongs to ns and is closed by Close; it is safe for concurrent use.
//
// Dumps through the handle can fail with netlink.ErrDumpInterrupted when the
// kernel's list changed meanwhile: use NS.Links, NS.Addrs and NS.Routes,
// which retry, instead of the handle's LinkList, AddrList and RouteList.
func (ns *NS) Netlink() (*netlink.Handle, error) {
	if err := ns.usable(); err != nil {
		return nil, err
	}
	ns.nlOnce.Lock()
	defer ns.nlOnce.Unlock()
	if ns.nl != nil {
		return ns.nl, nil
	}
	var h *netlink.Handle
	err := ns.Do(func() error {
		var err error
		// No families given: the handle opens a socket for every family
		// netlink supports, so no request ever falls back to a socket of
		// the calling thread's namespace.
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, ns.opErr("netns.netlink", "", err)
	}
	ns.nl = h
	return h, nil
}

// NFTables runs fn with an nftables connection whose socket was opened in
// ns. Calls are serialised: a batch built in fn and its Flush are one unit
// that no other caller's rules can join. The connection belongs to ns and is
// closed by Close.
func (ns *NS) NFTables(fn func(c *nftables.Conn) error) error {
	if err := ns.usable(); err != nil {
		return err
	}
	if fn == nil {
		return &ValidationError{Pkg: "netns", Field: "fn", Value: "<nil>", Reason: "no function to run"}
	}
	ns.nftMu.Lock()
	defer ns.nftMu.Unlock()
	if ns.nft == nil {
		ns.mu.RLock()
		fd := ns.fd
		if fd < 0 {
			ns.mu.RUnlock()
			return ErrClosed
		}
		c, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(fd))
		ns.mu.RUnlock()
		if err != nil {
			return ns.opErr("netns.nftables", "", err)
		}
		ns.nft = c
	}
	return fn(ns.nft)
}

// A Dir is a run directory of named namespaces: each is a file in it on
// which the namespace is bind-mounted, as `ip netns add` does. The zero Dir
// is DefaultDir. Embedders and tests can keep namespaces in a directory of
// their own, out of `ip netns list`.
type Dir string

func (d Dir) path() string {
	if d == "" {
		return DefaultDir
	}
	return string(d)
}

// New creates a namespace named name in d and returns a handle to it; like
// `ip netns add NAME`. The directory is created if needed. It fails with an
// error matching ErrExists if the name is taken, and leaves nothing behind
// when it fails.
func (d Dir) New(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	dir := d.path()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, &OpError{Op: "netns.new", NS: path, Err: err}
	}
	// O_EXCL makes the name ours before anything else is done.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return nil, &OpError{Op: "netns.new", NS: path, Err: err}
	}
	unix.Close(fd)
	ns, err := New()
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	src := fmt.Sprintf("/proc/self/fd/%d", ns.fd)
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		ns.Close()
		os.Remove(path)
		return nil, &OpError{Op: "netns.new", NS: path, Err: fmt.Errorf("bind mount: %w", err)}
	}
	ns.path, ns.name = path, name
	return ns, nil
}

// Open opens the namespace named name in d. It fails with an error matching
// ErrNotFound if there is none, and refuses a file that is not a network
// namespace (a name whose creation was interrupted).
func (d Dir) Open(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return openPath(filepath.Join(d.path(), name), name)
}

// Delete removes the namespace named name from d: it unmounts it and removes
// the file, like `ip netns delete NAME`. The namespace itself goes away when
// nothing else refers to it. Deleting a name that is not there succeeds.
func (d Dir) Delete(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	return deletePath(filepath.Join(d.path(), name), true)
}

// Delete removes a named namespace: by name in DefaultDir, or by path when
// the argument contains a '/'. Deleting what is not there succeeds.
func Delete(nameOrPath string) error {
	if strings.Contains(nameOrPath, "/") {
		return deletePath(nameOrPath, false)
	}
	return Dir("").Delete(nameOrPath)
}

// deletePath unmounts and removes the namespace bound at path. Anything else
// at path is refused, and left alone: a file that is not a namespace is not
// nsnet's to delete. In a namespace directory (inDir), an empty regular file
// is taken for what it is there: the mount point of a namespace whose
// creation or deletion was cut short.
func deletePath(path string, inDir bool) error {
	var sfs unix.Statfs_t
	switch err := unix.Statfs(path, &sfs); {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return &OpError{Op: "netns.delete", NS: path, Err: err}
	case sfs.Type != unix.NSFS_MAGIC:
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &OpError{Op: "netns.delete", NS: path, Err: err}
		}
		if !inDir || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
			return &ValidationError{Pkg: "netns", Field: "path", Value: path, Reason: "not a network namespace"}
		}
	}
	// MNT_DETACH: like ip netns delete, do not fail while a process still
	// has the mount busy; the namespace lives on while it is referenced.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return &OpError{Op: "netns.delete", NS: path, Err: err}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return &OpError{Op: "netns.delete", NS: path, Err: err}
	}
	return nil
}

// List returns the names of the namespaces in d, sorted, like `ip netns
// list`. A directory that does not exist holds none.
func (d Dir) List() ([]string, error) {
	entries, err := os.ReadDir(d.path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &OpError{Op: "netns.list", NS: d.path(), Err: err}
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
