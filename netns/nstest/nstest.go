//go:build linux

// Package nstest gives Go tests throwaway network namespaces and topologies
// on the real kernel: a sandbox namespace that acts as the host, containers,
// several hosts joined by an underlay bridge, an "outside" network, and
// helpers that dial, listen and ping from inside a namespace.
//
// Every fixture cleans up after itself and checks that nothing leaked: at the
// end of a test the sandbox host must hold the same links, addresses, routes
// and nftables tables as at its start (what is left is reported and then
// deleted), and the machine's own namespace (its links, its nftables tables
// and the named namespaces of /var/run/netns) must hold nothing the test
// could have left there: not all changes, as other processes change it too
// (see [Machine]; [Strict] or NSTEST_STRICT=1 reports every change). Use [Main]
// in TestMain for the process-wide checks: descriptors, goroutines, and no
// thread left in a foreign namespace.
//
//	func TestMain(m *testing.M) { nstest.Main(m) }
//
//	func TestAttach(t *testing.T) {
//		t.Parallel()
//		host := nstest.Host(t)
//		ctr := nstest.Container(t, host)
//		...
//	}
//
// # Privileges
//
// The fixtures need root (CAP_SYS_ADMIN and CAP_NET_ADMIN). Without it a
// test that asks for one is skipped with the reason; when the environment
// has CI=true it fails instead, so that a CI run that lost its privileges
// cannot pass by skipping everything. Run `sudo go test ./...`, or `go test
// -exec sudo ./...`.
//
// Never does a fixture change the machine's own namespace: hosts,
// containers, underlays and the outside are all namespaces made for the test.
//
// For a real etcd server that the hosts of an Underlay reach, see the
// package etcdtest below this one.
//
// # Speed
//
// Set-up, cleanup and leak checks of each fixture, made and torn down 20
// times in a row, the median (ms) of each of three runs, on the project's
// 2-core VM while other test suites kept it loaded (load average 11 to 13):
//
//	go test -c -o nstest.test ./netns/nstest/
//	./nstest.test -test.run '^$' -test.bench '^BenchmarkHost$' -test.benchtime 20x   # and so on
//
//	                        before         now
//	BenchmarkBareNamespace  -              0.29  0.32  0.37   (netns.New and Close: the floor)
//	BenchmarkHost           1.75           0.85  0.86  1.01   (0.62 0.64 at lighter load)
//	BenchmarkHostContainer  2.3            0.92  1.16  1.20
//	BenchmarkOutside        29             3.5   4.6   5.0    (9 to 20 at the heaviest load)
//	BenchmarkUnderlay3      164            7.6   9.2  11.5    (12 to 30 at the heaviest load)
//
// Where the time went, and what was done: deleting a link waits for the
// kernel to free it (RCU grace periods, ~17 ms a link), and Underlay
// deleted its bridge and each port, Outside its uplink; now the links a
// fixture made before the test got the namespaces are part of the leak
// checks' baseline and go with the namespaces, and those that end in a
// namespace the test already held (Outside's uplink, Topology.Attach's
// port) are deleted through internal/linkdel, which returns when the
// kernel announces the deletion. A google/nftables connection and a
// vishvananda/netlink handle each cost ~0.1 to 0.2 ms to open in a fresh
// namespace, and a full link dump parses statistics and VF lists: the leak
// checks now read names, aliases, addresses, routes and tables through two
// raw netlink sockets. Every fresh host holds the same (lo, 127.0.0.1/8,
// ::1/128): its baseline is read once per process. lo is set up with an
// ioctl, and a test with several hosts checks the machine once.
//
// What a namespace costs the kernel to tear down (its cleanup_net worker,
// under the rtnl lock) is not counted in a fixture's cleanup: it comes
// after, and shows as the long tail (p90 and max metrics of the same
// benchmarks) and in ns/op when fixtures are made back to back.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

var (
	probeOnce sync.Once
	probeErr  error
)

// probe reports whether this process can create network namespaces, once.
func probe() error {
	probeOnce.Do(func() {
		ns, err := netns.New()
		if err != nil {
			probeErr = err
			return
		}
		probeErr = ns.Close()
	})
	return probeErr
}

// Require skips the test, or fails it when CI=true, unless this process can
// create network namespaces. Every fixture calls it; call it directly in a
// test that needs privileges but no fixture.
func Require(t testing.TB) {
	t.Helper()
	probeErr := probe()
	if probeErr == nil {
		return
	}
	msg := "nstest: cannot create network namespaces (run as root: sudo go test ./...): " + probeErr.Error()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " [CI=true: failing instead of skipping]")
	}
	if errors.Is(probeErr, os.ErrPermission) {
		t.Skip(msg)
	}
	t.Fatal(msg)
}

// Name returns a link name starting with prefix, with random hex digits
// after it, at most 15 bytes long, for names that must not collide between
// parallel tests. prefix must be at most 10 bytes.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	n := ifname.MaxLen - len(prefix)
	if n < 5 {
		t.Fatalf("nstest.Name: prefix %q is too long (at most %d bytes)", prefix, ifname.MaxLen-5)
	}
	if n > 8 {
		n = 8
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := prefix + hex.EncodeToString(b)[:n]
	issued.Store(name, true)
	return name
}

// Host returns a new namespace that acts as the test's host, with lo up.
// At cleanup it reports (as a test error) and deletes every link, address,
// route and nftables table that the test left in it, checks that the
// machine's own namespace did not change, and closes it.
func Host(t testing.TB) *netns.NS {
	t.Helper()
	return newHost(t).ns
}

// sandbox is a host namespace and what it held when the test got it.
type sandbox struct {
	ns     *netns.NS
	before state
}

// newHost is Host, keeping the baseline for fixtures that add their own
// links to a host before the test gets it (see rebase).
func newHost(t testing.TB) *sandbox {
	t.Helper()
	Require(t)
	Machine(t)
	sb := &sandbox{ns: newNS(t)}
	// Every fresh namespace with lo up holds the same: read it once per
	// process, not once per host.
	var err error
	if sb.before, err = freshState(sb.ns); err != nil {
		t.Fatalf("nstest.Host: %v", err)
	}
	t.Cleanup(func() {
		after, err := snapshotNS(sb.ns)
		if err != nil {
			t.Errorf("nstest.Host: reading the sandbox at cleanup: %v", err)
		} else if leaks := after.minus(sb.before); len(leaks) > 0 {
			t.Errorf("nstest.Host: the test left in its sandbox host %s:\n%s", sb.ns, leaks)
			removeLeaks(sb.ns, sb.before, after)
		}
	})
	return sb
}

// rebase makes what the sandbox holds now its baseline: for a fixture that
// wired a host it made, before the test got it.
func (sb *sandbox) rebase(t testing.TB) {
	t.Helper()
	var err error
	if sb.before, err = snapshotNS(sb.ns); err != nil {
		t.Fatalf("nstest: %v", err)
	}
}

var (
	freshOnce sync.Once
	fresh     state
	freshErr  error
)

// freshState returns what a namespace holds right after newNS: read from
// the first one, the same for all.
func freshState(ns *netns.NS) (state, error) {
	freshOnce.Do(func() { fresh, freshErr = snapshotNS(ns) })
	return fresh, freshErr
}

// Machine records the machine's own namespace (its links and nftables
// tables) and the named namespaces of /var/run/netns, and checks at cleanup
// that the test left nothing there. Host calls it; call it directly in a
// test that runs a program (an example) instead of using fixtures.
//
// Other processes change the machine too (Docker, a kubelet, another test
// binary), so by default the check reports only what appeared during the
// test and could be the test's: a link whose alias carries nsnet's mark
// or whose name nsnet derives ("ovbr…", "ovvx…", "veth" and 11 hex
// digits) or Name handed out, nsnet's nftables table "nsnet", and a named
// namespace whose name Name handed out or that is one of the namespaces
// the fixtures made. With Strict (or NSTEST_STRICT=1) it reports every
// change, as on a machine where nothing else runs.
func Machine(t testing.TB, opts ...MachineOption) {
	t.Helper()
	Require(t)
	strict := strictEnv() || slices.Contains(opts, Strict)
	// One check per test is enough (Underlay makes several hosts): the
	// first one's snapshot is the earliest.
	key := machineKey{t, strict}
	if _, dup := machineChecks.LoadOrStore(key, true); dup {
		return
	}
	before := snapshotMachine(t)
	t.Cleanup(func() {
		before.check(t, strict)
		machineChecks.Delete(key)
	})
}

type machineKey struct {
	t      testing.TB
	strict bool
}

// machineChecks holds the tests whose machine check is registered.
var machineChecks sync.Map

// Container returns a new namespace with lo up, for a container of host
// (the host is where its links will be wired to; the namespace itself is
// separate). It is closed at cleanup.
func Container(t testing.TB, host *netns.NS) *netns.NS {
	t.Helper()
	Require(t)
	return newNS(t)
}

func newNS(t testing.TB) *netns.NS {
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("nstest: creating a namespace: %v", err)
	}
	t.Cleanup(func() {
		noteNamed(ns)
		ns.Close()
	})
	if err := loopbackUp(ns); err != nil {
		t.Fatalf("nstest: %v", err)
	}
	return ns
}

// loopbackUp is ns.LoopbackUp through an ioctl on a socket of ns: it needs
// no netlink handle (which the test may never use) and no dump to find lo.
func loopbackUp(ns *netns.NS) error {
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq("lo")
		if err == nil {
			err = unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr)
		}
		if err == nil {
			ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
			err = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
		}
		if err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
		return nil
	})
}

// Dir returns a private run directory for named namespaces, so that a test
// can create named namespaces without touching /var/run/netns. At cleanup
// it reports and deletes every namespace the test left in it.
func Dir(t testing.TB) netns.Dir {
	t.Helper()
	Require(t)
	d := netns.Dir(t.TempDir())
	t.Cleanup(func() {
		names, err := d.List()
		if err != nil {
			t.Errorf("nstest.Dir: %v", err)
		}
		if len(names) > 0 {
			t.Errorf("nstest.Dir: the test left named namespaces in %s: %v", string(d), names)
		}
		for _, n := range names {
			if err := d.Delete(n); err != nil {
				t.Errorf("nstest.Dir: %v", err)
			}
		}
	})
	return d
}

// LinkNames returns the names of the links of ns, failing the test if they
// cannot be read.
func LinkNames(t testing.TB, ns *netns.NS) []string {
	t.Helper()
	links, err := ns.Links()
	if err != nil {
		t.Fatalf("nstest.LinkNames: %v", err)
	}
	names := make([]string, len(links))
	for i, l := range links {
		names[i] = l.Attrs().Name
	}
	return names
}
