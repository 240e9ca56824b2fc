package netns_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv(mainThreadEnv) != "" {
		os.Exit(mainThreadChild())
	}
	nstest.Main(m)
}

// threadNS returns the network namespace of the calling thread.
func threadNS(t testing.TB) netns.ID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return netns.ID{Dev: st.Dev, Ino: st.Ino}
}

func TestNewAnonymous(t *testing.T) {
	t.Parallel()
	nstest.Require(t)
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer ns.Close()
	self, err := netns.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	defer self.Close()
	if ns.Equal(self) {
		t.Fatalf("new namespace %s equals the process's %s", ns, self)
	}
	if ns.Path() != "" || ns.Name() != "" {
		t.Errorf("anonymous namespace has path %q, name %q", ns.Path(), ns.Name())
	}
	if !strings.HasPrefix(ns.String(), "net:[") {
		t.Errorf("String() = %q, want net:[inode]", ns.String())
	}

	// A fresh namespace has only lo, and it is down.
	links, err := ns.Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links of a new namespace = %v, want only lo", names(links))
	}
	if links[0].Attrs().Flags&net.FlagUp != 0 {
		t.Fatalf("lo of a new namespace is up")
	}
	// 127.0.0.1 does not answer before lo is up...
	if err := nstest.Ping(t.Context(), ns, netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Fatalf("ping 127.0.0.1 answered with lo down")
	}
	if err := ns.LoopbackUp(); err != nil {
		t.Fatalf("LoopbackUp: %v", err)
	}
	if err := ns.LoopbackUp(); err != nil {
		t.Fatalf("second LoopbackUp: %v", err)
	}
	// ...and does after.
	srv := nstest.Serve(t, ns, "tcp", "127.0.0.1:0")
	r, err := nstest.Exchange(t.Context(), ns, "tcp", srv.Addr.String(), "hello")
	if err != nil || r.Data != "hello" {
		t.Fatalf("exchange over lo: %+v, %v", r, err)
	}
	if err := nstest.Ping(t.Context(), ns, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatalf("ping 127.0.0.1: %v", err)
	}
	if err := nstest.Ping(t.Context(), ns, netip.MustParseAddr("::1")); err != nil {
		t.Fatalf("ping ::1: %v", err)
	}
}

func names(links []netlink.Link) []string {
	var out []string
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}

func TestNamed(t *testing.T) {
	t.Parallel()
	dir := nstest.Dir(t)
	ns, err := dir.New("test1")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer ns.Close()
	if ns.Name() != "test1" || ns.Path() != filepath.Join(string(dir), "test1") {
		t.Errorf("Name, Path = %q, %q", ns.Name(), ns.Path())
	}
	if _, err := dir.New("test1"); !errors.Is(err, netns.ErrExists) {
		t.Fatalf("creating test1 again: %v, want ErrExists", err)
	}
	ns2, err := dir.New("test2")
	if err != nil {
		t.Fatal(err)
	}
	ns2.Close()

	got, err := dir.List()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"test1", "test2"}; !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}

	// Opening by name and by path give the same namespace, and it outlives
	// the handle that created it.
	byName, err := dir.Open("test1")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer byName.Close()
	byPath, err := netns.Open(ns.Path())
	if err != nil {
		t.Fatalf("Open by path: %v", err)
	}
	defer byPath.Close()
	if !byName.Equal(ns) || !byPath.Equal(ns) || byName.ID() != ns.ID() {
		t.Fatalf("handles to test1 differ: %v %v %v", ns.ID(), byName.ID(), byPath.ID())
	}
	other, err := dir.Open("test2")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if other.Equal(ns) {
		t.Fatal("test1 equals test2")
	}

	for _, name := range []string{"test1", "test2"} {
		if err := dir.Delete(name); err != nil {
			t.Fatalf("Delete %s: %v", name, err)
		}
		if err := dir.Delete(name); err != nil {
			t.Fatalf("Delete %s again: %v", name, err)
		}
	}
	if got, _ := dir.List(); len(got) != 0 {
		t.Fatalf("List after Delete = %v", got)
	}
	if _, err := dir.Open("test1"); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("Open after Delete: %v, want ErrNotFound", err)
	}
	// The open handle still works after its name is gone.
	if err := ns.LoopbackUp(); err != nil {
		t.Fatalf("handle after Delete: %v", err)
	}
}

func TestNamedNotANamespace(t *testing.T) {
	t.Parallel()
	dir := nstest.Dir(t)
	// A file left by an interrupted creation is not a namespace.
	path := filepath.Join(string(dir), "half")
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.Open("half"); err == nil {
		t.Fatal("opened a plain file as a namespace")
	}
	if _, err := netns.Open("/proc/self/ns/mnt"); err == nil {
		t.Fatal("opened a mount namespace as a network namespace")
	}
	if err := dir.Delete("half"); err != nil {
		t.Fatalf("Delete of a half-made name: %v", err)
	}
}

func TestOpenPIDAndCurrent(t *testing.T) {
	t.Parallel()
	nstest.Require(t)
	self, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	byPID, err := netns.OpenPID(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer byPID.Close()
	if !self.Equal(byPID) {
		t.Fatalf("Current %v != OpenPID(self) %v", self.ID(), byPID.ID())
	}
	if self.ID() != threadNS(t) {
		t.Fatalf("Current %v is not this thread's namespace %v", self.ID(), threadNS(t))
	}
	if _, err := netns.OpenPID(1 << 30); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("OpenPID of no process: %v, want ErrNotFound", err)
	}
	var ve *netns.ValidationError
	if _, err := netns.OpenPID(0); !errors.As(err, &ve) {
		t.Fatalf("OpenPID(0): %v, want ValidationError", err)
	}
}

func TestBadNames(t *testing.T) {
	t.Parallel()
	dir := netns.Dir(t.TempDir()) // never written: every call fails before
	for _, name := range []string{"", ".", "..", "a/b", "/abs", strings.Repeat("n", 256), "nul\x00"} {
		var ve *netns.ValidationError
		if _, err := dir.New(name); !errors.As(err, &ve) {
			t.Errorf("New(%q): %v, want ValidationError", name, err)
		}
		if _, err := dir.Open(name); !errors.As(err, &ve) {
			t.Errorf("Open(%q): %v, want ValidationError", name, err)
		}
		if err := dir.Delete(name); !errors.As(err, &ve) {
			t.Errorf("Delete(%q): %v, want ValidationError", name, err)
		}
	}
	if ents, _ := os.ReadDir(string(dir)); len(ents) != 0 {
		t.Fatalf("bad names wrote to the directory: %v", ents)
	}
	if _, err := netns.Open("nosuchns-" + t.Name()); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("Open of a missing name: %v, want ErrNotFound", err)
	}
}

func TestDoComesBack(t *testing.T) {
	t.Parallel()
	ns := nstest.Host(t)
	before := threadNS(t)
	var inside netns.ID
	if err := ns.Do(func() error {
		inside = threadNS(t)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside != ns.ID() {
		t.Fatalf("fn ran in %v, want %v", inside, ns.ID())
	}
	if threadNS(t) != before {
		t.Fatal("caller's thread changed namespace")
	}

	// fn's error comes back as it is.
	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); err != sentinel {
		t.Fatalf("Do returned %v, want fn's error", err)
	}

	// A panic comes back to the caller, after the thread was switched back.
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want boom", v)
			}
		}()
		ns.Do(func() error { panic("boom") })
		t.Fatal("Do did not re-panic")
	}()
}

func TestDoClosed(t *testing.T) {
	t.Parallel()
	nstest.Require(t)
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := ns.Do(func() error { return nil }); !errors.Is(err, netns.ErrClosed) {
		t.Fatalf("Do after Close: %v, want ErrClosed", err)
	}
	if _, err := ns.Netlink(); !errors.Is(err, netns.ErrClosed) {
		t.Fatalf("Netlink after Close: %v, want ErrClosed", err)
	}
	if ns.Fd() != -1 {
		t.Fatalf("Fd after Close = %d", ns.Fd())
	}
}

func TestDup(t *testing.T) {
	t.Parallel()
	ns := nstest.Host(t)
	d, err := ns.Dup()
	if err != nil {
		t.Fatal(err)
	}
	if !d.Equal(ns) || d.Fd() == ns.Fd() {
		t.Fatalf("Dup: id %v fd %d; original %v fd %d", d.ID(), d.Fd(), ns.ID(), ns.Fd())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The original is untouched by closing the copy.
	if err := ns.Do(func() error { return nil }); err != nil {
		t.Fatalf("original after closing the copy: %v", err)
	}
	if _, err := d.Dup(); !errors.Is(err, netns.ErrClosed) {
		t.Fatalf("Dup of a closed handle: %v", err)
	}
}

func TestSysctl(t *testing.T) {
	t.Parallel()
	a, b := nstest.Host(t), nstest.Host(t)
	for _, key := range []string{"net.ipv4.ip_forward", "net/ipv4/ip_forward"} {
		if v, err := a.Sysctl(key); err != nil || v != "0" {
			t.Fatalf("Sysctl(%s) = %q, %v; want 0", key, v, err)
		}
	}
	if err := a.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := a.Sysctl("net.ipv4.ip_forward"); v != "1" {
		t.Fatalf("after SetSysctl: %q", v)
	}
	// Only that namespace changed: not another sandbox, not the machine.
	if v, _ := b.Sysctl("net.ipv4.ip_forward"); v != "0" {
		t.Fatalf("another namespace's ip_forward = %q", v)
	}
	self, _ := netns.Current()
	defer self.Close()
	rootBefore, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if v, _ := self.Sysctl("net.ipv4.ip_forward"); v != strings.TrimSpace(string(rootBefore)) {
		t.Fatalf("machine's ip_forward read as %q, file says %q", v, rootBefore)
	}
	// Interface-specific keys with the slash form.
	if v, err := a.Sysctl("net/ipv6/conf/lo/disable_ipv6"); err != nil || v == "" {
		t.Fatalf("per-interface sysctl: %q, %v", v, err)
	}
	for _, key := range []string{"kernel.hostname", "net", "net..ipv4", "net/../kernel/hostname", "vm.swappiness", ""} {
		var ve *netns.ValidationError
		if err := a.SetSysctl(key, "1"); !errors.As(err, &ve) {
			t.Errorf("SetSysctl(%q): %v, want ValidationError", key, err)
		}
	}
	if _, err := a.Sysctl("net.ipv4.no_such_key"); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
}

func TestNetlinkHandleIsBound(t *testing.T) {
	t.Parallel()
	ns := nstest.Host(t)
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if h2, _ := ns.Netlink(); h2 != h {
		t.Fatal("Netlink returned a second handle")
	}
	// A link made through the handle appears in ns, from any goroutine.
	name := nstest.Name(t, "nsb")
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	links, err := ns.Links()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names(links), name) {
		t.Fatalf("bridge not in ns: %v", names(links))
	}
	self, _ := netns.Current()
	defer self.Close()
	rootLinks, _ := self.Links()
	if slices.Contains(names(rootLinks), name) {
		t.Fatal("bridge appeared in the machine's namespace")
	}
	l, _ := h.LinkByName(name)
	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	// Routes read through the retrying dumps.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, Flags: net.FlagUp}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	defer h.LinkDel(br)
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 255, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	prefixes, err := ns.RoutePrefixes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(prefixes, netip.MustParsePrefix("10.255.0.0/24")) {
		t.Fatalf("RoutePrefixes = %v, want 10.255.0.0/24 among them", prefixes)
	}
}

func TestOpErrorMatching(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err    error
		target error
		want   bool
	}{
		{unix.ENODEV, os.ErrNotExist, true},
		{unix.ESRCH, os.ErrNotExist, true},
		{unix.ENOENT, os.ErrNotExist, true},
		{netlink.LinkNotFoundError{}, os.ErrNotExist, true},
		{unix.EEXIST, os.ErrExist, true},
		{unix.EPERM, os.ErrPermission, true},
		{unix.EAFNOSUPPORT, errors.ErrUnsupported, true},
		{unix.EOPNOTSUPP, errors.ErrUnsupported, true},
		{unix.EBUSY, os.ErrNotExist, false},
		{unix.EBUSY, unix.EBUSY, true},
		{fmt.Errorf("wrapped: %w", unix.ENODEV), os.ErrNotExist, true},
	} {
		err := &netns.OpError{Op: "test.op", Err: tc.err}
		if got := errors.Is(err, tc.target); got != tc.want {
			t.Errorf("errors.Is(OpError{%v}, %v) = %v, want %v", tc.err, tc.target, got, tc.want)
		}
	}
}

// TestDoHoldsNothing: when Do returns, the descriptor it opened on the
// caller's namespace, to switch the thread back, is closed: no descriptor
// of Do's outlives the call. Not parallel: it reads the process's
// descriptors.
func TestDoHoldsNothing(t *testing.T) {
	ns := nstest.Host(t)
	home, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	onHome := func() map[string]bool { // descriptors open on the caller's namespace
		des, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, de := range des {
			if l, err := os.Readlink("/proc/self/fd/" + de.Name()); err == nil && l == home {
				out[de.Name()] = true
			}
		}
		return out
	}
	before := onHome()
	for i := range 200 {
		var during map[string]bool
		if err := ns.Do(func() error { during = onHome(); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(during) <= len(before) {
			t.Fatalf("call %d: Do holds no descriptor on the caller's namespace while fn runs: the test sees nothing", i)
		}
		for fd := range onHome() {
			if during[fd] && !before[fd] {
				t.Fatalf("call %d: descriptor %s, on the caller's namespace, is still open after Do returned", i, fd)
			}
		}
	}
}
