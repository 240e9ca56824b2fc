// Package nstest gives Go tests throwaway network namespaces and topologies
// on the real kernel: a sandbox namespace that acts as the host, containers,
// several hosts joined by an underlay bridge, an "outside" network, and
// helpers that dial, listen and ping from inside a namespace.
//
// Every fixture cleans up after itself and checks that nothing leaked: at the
// end of a test the sandbox host must hold the same links, addresses, routes
// and nftables tables as at its start (what is left is reported and then
// deleted), and the machine's own namespace (its links, its nftables tables
// and the named namespaces of /var/run/netns) must be as it was. Use [Main]
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
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/netns"
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
	return prefix + hex.EncodeToString(b)[:n]
}

// Host returns a new namespace that acts as the test's host, with lo up.
// At cleanup it reports (as a test error) and deletes every link, address,
// route and nftables table that the test left in it, checks that the
// machine's own namespace did not change, and closes it.
func Host(t testing.TB) *netns.NS {
	t.Helper()
	Require(t)
	Machine(t)
	ns := newNS(t)
	before, err := snapshotNS(ns)
	if err != nil {
		t.Fatalf("nstest.Host: %v", err)
	}
	t.Cleanup(func() {
		after, err := snapshotNS(ns)
		if err != nil {
			t.Errorf("nstest.Host: reading the sandbox at cleanup: %v", err)
		} else if leaks := after.minus(before); len(leaks) > 0 {
			t.Errorf("nstest.Host: the test left in its sandbox host %s:\n%s", ns, leaks)
			removeLeaks(ns, before, after)
		}
		ns.Close()
	})
	return ns
}

// Machine records the machine's own namespace (its links and nftables
// tables) and the named namespaces of /var/run/netns, and checks at cleanup
// that none of them changed. Host calls it; call it directly in a test that
// runs a program (an example) instead of using fixtures.
func Machine(t testing.TB) {
	t.Helper()
	Require(t)
	before := snapshotMachine(t)
	t.Cleanup(func() { before.check(t) })
}

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
	t.Cleanup(func() { ns.Close() })
	if err := ns.LoopbackUp(); err != nil {
		t.Fatalf("nstest: %v", err)
	}
	return ns
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
