package bridge

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lifecycleEnv makes the test binary a child of a lifecycle test (see
// TestMain): its value says what the child does.
const lifecycleEnv = "NSNET_BRIDGE_LIFECYCLE"

// childCmd returns the command that runs this test binary as a lifecycle
// child in mode, on host (through this process's descriptor) and the file
// store in dir.
func childCmd(t testing.TB, mode string, host *netns.NS, dir string, extra ...string) *exec.Cmd {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lifecycleEnv+"="+mode,
		fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()),
		"NSNET_STORE="+dir)
	cmd.Env = append(cmd.Env, extra...)
	return cmd
}

// lifecycleChild runs one call in a child process and prints its outcome.
func lifecycleChild(mode string) {
	fail := func(err error) {
		fmt.Println("err", err)
		os.Exit(0)
	}
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		fail(err)
	}
	alloc, closeAlloc, err := openFileAlloc(os.Getenv("NSNET_STORE"))
	if err != nil {
		fail(err)
	}
	defer closeAlloc()
	ctx := context.Background()
	switch mode {
	case "new":
		// Wait for the go: both children call New at once.
		bufio.NewReader(os.Stdin).ReadString('\n')
		n, err := New(ctx, host, alloc, Config{Name: os.Getenv("NSNET_NET")})
		if err != nil {
			fail(err)
		}
		fmt.Println("ok", n.Config().Subnets[0].Subnet)
	case "crash":
		crashChild(ctx, host, alloc)
	}
}

// TestNewTwoProcesses: two processes creating the same network at once
// both get it, with the same subnet, and the network is whole: no raw
// "file exists", no ErrExists for identical settings, no loser deleting
// the winner's pool.
func TestNewTwoProcesses(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	for round := range 50 {
		name := fmt.Sprintf("race%d", round)
		var cmds []*exec.Cmd
		var outs []*strings.Builder
		var gos []*os.File
		for range 2 {
			cmd := childCmd(t, "new", host, dir, "NSNET_NET="+name)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdin = r
			out := &strings.Builder{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			r.Close()
			cmds, outs, gos = append(cmds, cmd), append(outs, out), append(gos, w)
		}
		for _, w := range gos {
			w.Write([]byte("go\n"))
			w.Close()
		}
		for i, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				t.Fatalf("round %d: child %d: %v: %s", round, i, err, outs[i])
			}
		}
		a, b := strings.TrimSpace(outs[0].String()), strings.TrimSpace(outs[1].String())
		if !strings.HasPrefix(a, "ok ") || a != b {
			t.Fatalf("round %d: the two processes got %q and %q, want the same network", round, a, b)
		}
		n, err := Open(t.Context(), host, alloc, name)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if _, _, err := alloc.Inspect(t.Context(), poolName(name)); err != nil {
			t.Fatalf("round %d: the network's pool: %v", round, err)
		}
		if err := n.Delete(t.Context(), false); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHalfMade: links that a killed New or Attach left before marking them
// (their group, no alias) are nsnet's: New completes the bridge, Attach
// replaces the veth, Detach removes it. A host-veth name that a foreign
// link took makes Attach choose another.
func TestHalfMade(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	// A bridge as a New killed after creating it leaves it.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = BridgeName("half")
	attrs.Group = ctrlink.Group("bridge/half")
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	n := newNet(t, host, alloc, Config{Name: "half", Subnets: subnet("10.41.0.0/24", "")})
	if n.Config().Bridge != attrs.Name {
		t.Fatalf("New made %s, want the half-made %s completed", n.Config().Bridge, attrs.Name)
	}

	// A veth as an Attach killed after creating it leaves it: its peer
	// is the container's eth0, with no address.
	ctr := nstest.Container(t, host)
	half := hostVethName("half", "c1", 0)
	va := netlink.NewLinkAttrs()
	va.Name = half
	va.Group = epGroup("half", "c1")
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: va, PeerName: "eth0", PeerNamespace: netlink.NsFd(ctr.Fd())}); err != nil {
		t.Fatal(err)
	}
	_, e := attach(t, n, "c1", EndpointConfig{NS: ctr})
	mustPing(t, "host to the re-made c1", host, e.Addrs[0].Addr())

	// Detach removes a half-made veth too.
	ctr2 := nstest.Container(t, host)
	va.Name, va.Group = hostVethName("half", "c2", 0), epGroup("half", "c2")
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: va, PeerName: "eth0", PeerNamespace: netlink.NsFd(ctr2.Fd())}); err != nil {
		t.Fatal(err)
	}
	if err := n.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	if got := nstest.LinkNames(t, ctr2); len(got) != 1 {
		t.Errorf("after Detach of a half-made endpoint the container has %v, want lo only", got)
	}

	// A foreign link with the endpoint's first name.
	foreign := netlink.NewLinkAttrs()
	foreign.Name = hostVethName("half", "c3", 0)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: foreign, PeerName: "foreign-peer"}); err != nil {
		t.Fatal(err)
	}
	defer h.LinkDel(&netlink.Veth{LinkAttrs: foreign})
	c3, e3 := attach(t, n, "c3", EndpointConfig{})
	if e3.HostVeth == foreign.Name {
		t.Fatalf("attach took the foreign link's name %s", foreign.Name)
	}
	mustPing(t, "c3 to c1", c3, e.Addrs[0].Addr())
	if err := n.Detach(t.Context(), "c3"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(foreign.Name); err != nil {
		t.Fatalf("Detach touched the foreign link: %v", err)
	}
}

// blocked reports whether a call waits for network's lock (/proc/locks
// lists the waiters of each lock file by its inode).
func blocked(t testing.TB, host *netns.NS, network string) bool {
	l, err := keylock.File(locks.Prefix(host)+"."+network+".probe", true)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock(true)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(filepath.Dir(l.Path()), locks.Prefix(host)+"."+network), &st); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "-> FLOCK") && strings.Contains(line, fmt.Sprintf(":%d ", st.Ino)) {
			return true
		}
	}
	return false
}

// hold installs a step hook on network that blocks at step until release
// is closed, and closes at when the call gets there.
func hold(t testing.TB, network, at string) (reached, release chan struct{}) {
	reached, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	stepHooks.Store(network, func(s string) error {
		if s == at {
			once.Do(func() { close(reached); <-release })
		}
		return nil
	})
	t.Cleanup(func() { stepHooks.Delete(network) })
	return reached, release
}

// TestDeleteRacingAttach: a Delete(false) that comes while an Attach is
// half way waits for it and then finds the endpoint (ErrInUse), instead of
// deleting the network under it; an Attach that comes while a Delete is
// half way waits and then fails with ErrNotFound.
func TestDeleteRacingAttach(t *testing.T) {
	nstest.Require(t) // not parallel: it watches /proc/locks
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "delatt", Subnets: subnet("10.42.0.0/24", "")})
	ctr := nstest.Container(t, host)

	reached, release := hold(t, "delatt", "allocate")
	attached := make(chan error, 1)
	go func() {
		_, err := n.Attach(context.Background(), EndpointConfig{ID: "c1", NS: ctr})
		attached <- err
	}()
	<-reached
	deleted := make(chan error, 1)
	go func() { deleted <- n.Delete(context.Background(), false) }()
	// Let the attach go on once the delete waits for it (or returned:
	// then it did not wait, and the test fails below).
	for !blocked(t, host, "delatt") && len(deleted) == 0 {
		runtimeGosched()
	}
	close(release)
	if err := <-attached; err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if err := <-deleted; !errors.Is(err, ErrInUse) {
		t.Fatalf("Delete(false) racing Attach: %v, want ErrInUse", err)
	}
	stepHooks.Delete("delatt")

	// Now the other way round.
	reached, release = hold(t, "delatt", "delete-pool")
	go func() { deleted <- n.Delete(context.Background(), true) }()
	<-reached
	ctr2 := nstest.Container(t, host)
	go func() {
		_, err := n.Attach(context.Background(), EndpointConfig{ID: "c2", NS: ctr2})
		attached <- err
	}()
	for !blocked(t, host, "delatt") && len(attached) == 0 {
		runtimeGosched()
	}
	close(release)
	if err := <-deleted; err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := <-attached; !errors.Is(err, ErrNotFound) {
		t.Fatalf("Attach racing Delete: %v, want ErrNotFound", err)
	}
	if got := nstest.LinkNames(t, ctr2); len(got) != 1 {
		t.Errorf("the container of the failed attach has %v, want lo only", got)
	}
}

func runtimeGosched() { time.Sleep(100 * time.Microsecond) }

// TestSentinels: what the kernel answers matches the package's sentinels,
// not only raw errnos.
func TestSentinels(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "sentinels", Subnets: subnet("10.47.0.0/24", "")})
	ctr := nstest.Container(t, host)
	ch, _ := ctr.Netlink()
	a := netlink.NewLinkAttrs()
	a.Name = "eth0"
	if err := ch.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "other"}); err != nil {
		t.Fatal(err)
	}
	_, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, IfName: "eth0"})
	if !errors.Is(err, ErrExists) {
		t.Errorf("Attach with a taken IfName: %v, want ErrExists", err)
	}
	if got := held(t, n, "c1"); len(got) != 0 {
		t.Errorf("the failed attach holds %+v", got)
	}
	if e := sentinel(&netns.OpError{Op: "x", Err: syscall.ENODEV}); !errors.Is(e, ErrNotFound) {
		t.Errorf("ENODEV: %v does not match ErrNotFound", e)
	}
	if e := sentinel(&netns.OpError{Op: "x", Err: syscall.EEXIST}); !errors.Is(e, ErrExists) || !errors.Is(e, syscall.EEXIST) {
		t.Errorf("EEXIST: %v does not match ErrExists and the errno", e)
	}
}
