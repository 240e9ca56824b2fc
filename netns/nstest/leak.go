//go:build linux

package nstest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// state is what a namespace holds that a test could leak: links, addresses,
// routes, nftables tables, each rendered as a comparable line.
type state struct {
	links  []string
	addrs  []string
	routes []string
	tables []string
}

func snapshotNS(ns *netns.NS) (state, error) {
	var s state
	d, err := newDumper(ns)
	if err != nil {
		return s, err
	}
	defer d.close()
	links, err := d.links()
	if err != nil {
		return s, fmt.Errorf("links of %s: %w", ns, err)
	}
	for _, l := range links {
		s.links = append(s.links, l.name)
	}
	if s.addrs, err = d.addrs(); err != nil {
		return s, fmt.Errorf("addresses of %s: %w", ns, err)
	}
	if s.routes, err = d.routes(); err != nil {
		return s, fmt.Errorf("routes of %s: %w", ns, err)
	}
	if s.tables, err = d.tables(); err != nil {
		return s, fmt.Errorf("nftables tables of %s: %w", ns, err)
	}
	for _, l := range [][]string{s.links, s.addrs, s.routes, s.tables} {
		slices.Sort(l)
	}
	return s, nil
}

func family(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprint(uint8(f))
}

// minus renders what s holds that before did not.
func (s state) minus(before state) string {
	var b strings.Builder
	diff := func(kind string, now, then []string) {
		for _, x := range now {
			if !slices.Contains(then, x) {
				fmt.Fprintf(&b, "  %s %s\n", kind, x)
			}
		}
	}
	diff("link", s.links, before.links)
	diff("address", s.addrs, before.addrs)
	diff("route", s.routes, before.routes)
	diff("nftables", s.tables, before.tables)
	return b.String()
}

// removeLeaks deletes the tables and links that after holds and before did
// not: tables first, so that no packet is forwarded by a half torn-down
// ruleset; links synchronously, unlike the namespace's own teardown.
func removeLeaks(ns *netns.NS, before, after state) {
	ns.NFTables(func(c *nftables.Conn) error {
		ts, err := c.ListTables()
		if err != nil {
			return err
		}
		for _, t := range ts {
			if !slices.Contains(before.tables, fmt.Sprintf("table %s %s", family(t.Family), t.Name)) {
				c.DelTable(t)
			}
		}
		return c.Flush()
	})
	h, err := ns.Netlink()
	if err != nil {
		return
	}
	for _, name := range after.links {
		if slices.Contains(before.links, name) {
			continue
		}
		if l, err := h.LinkByName(name); err == nil {
			h.LinkDel(l)
		}
	}
}

// machine is a snapshot of what tests must never change: the machine's own
// namespace (links, nftables tables) and the named namespaces of
// /var/run/netns.
type machine struct {
	links  []link
	tables []string
	named  []string
}

// machineEnv is where the machine checks look: the process's own namespace
// and DefaultDir. nstest's own tests point it at sandboxes.
var machineEnv = struct {
	open func() (*netns.NS, error)
	dir  netns.Dir
}{processNS, netns.Dir("")}

var (
	rootOnce sync.Once
	root     *netns.NS
	rootErr  error
)

// processNS returns the process's own namespace, through one handle for
// the whole process.
func processNS() (*netns.NS, error) {
	rootOnce.Do(func() { root, rootErr = netns.Current() })
	return root, rootErr
}

func snapshotMachine(t testing.TB) machine {
	t.Helper()
	m, err := readMachine()
	if err != nil {
		t.Fatalf("nstest: reading the machine's own namespace: %v", err)
	}
	return m
}

func readMachine() (machine, error) {
	var m machine
	root, err := machineEnv.open()
	if err != nil {
		return m, err
	}
	d, err := newDumper(root)
	if err != nil {
		return m, err
	}
	defer d.close()
	if m.links, err = d.links(); err != nil {
		return m, fmt.Errorf("links: %w", err)
	}
	if m.tables, err = d.tables(); err != nil {
		return m, fmt.Errorf("nftables tables: %w", err)
	}
	m.named, err = machineEnv.dir.List()
	return m, err
}

// Names of kernel objects that nsnet or a test made, as Machine judges
// them. A link is nsnet's when its alias carries nsnet's mark (bridge and
// macvlan networks and endpoints), or when its name is one nsnet derives
// without a mark: an overlay's bridge and VXLAN device ("ovbr", "ovvx" and
// the VNI in hex) and an endpoint's host veth ("veth" and 11 hex digits;
// Docker's have 7). An nftables table is nsnet's when it is named "nsnet".
var (
	nsnetLinkName = regexp.MustCompile(`^(ovbr[0-9a-f]{1,6}|ovvx[0-9a-f]{1,6}|veth[0-9a-f]{11})$`)
	nsnetMark     = `{"nsnet":`
)

// issued records the names Name handed out, and the names under which a
// fixture's namespace was found bind-mounted in the machine's run
// directory, so that Machine can tell the test's objects from those of
// other processes.
var issued sync.Map

// noteNamed records the names under which ns is mounted in the machine's
// run directory. It runs while the fixture still holds ns, so no other
// namespace can have its inode number.
func noteNamed(ns *netns.NS) {
	names, _ := machineEnv.dir.List()
	id := ns.ID()
	for _, n := range names {
		// A bind mount stats as the namespace it holds.
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dirPath(machineEnv.dir), n), &st) == nil && st.Dev == id.Dev && st.Ino == id.Ino {
			issued.Store(n, true)
		}
	}
}

// ours reports whether a link of the machine's namespace may be a leak of
// the test: nsnet's, or named by Name.
func (l link) ours() bool {
	_, named := issued.Load(l.name)
	return named || strings.HasPrefix(l.alias, nsnetMark) || nsnetLinkName.MatchString(l.name)
}

// ourTable reports whether an nftables table ("table FAMILY NAME") of the
// machine's namespace may be a leak of the test: nsnet's own.
func ourTable(table string) bool { return strings.HasSuffix(table, " "+nsnetTable) }

// nsnetTable is internal/nft.TableName (not imported: nft's tests import
// nstest).
const nsnetTable = "nsnet"

// ourNamed reports whether the named namespace name of the machine's run
// directory may be a leak of the test: named by Name, or one of the
// namespaces the fixtures made.
func ourNamed(name string) bool {
	_, ok := issued.Load(name)
	return ok
}

// A MachineOption changes what Machine checks.
type MachineOption int

// Strict makes Machine report every link, nftables table and named
// namespace that appeared in the machine's namespace during the test,
// whoever made it: the check to use on a machine where nothing else runs
// (CI). Without it, Machine reports only what the test could have leaked
// (see Machine). NSTEST_STRICT=1 in the environment makes every check
// strict, including those of Host.
const Strict MachineOption = 1

func dirPath(d netns.Dir) string {
	if d == "" {
		return netns.DefaultDir
	}
	return string(d)
}

func strictEnv() bool { return os.Getenv("NSTEST_STRICT") == "1" }

func (before machine) check(t testing.TB, strict bool) {
	t.Helper()
	after, err := readMachine()
	if err != nil {
		t.Errorf("nstest: reading the machine's own namespace: %v", err)
		return
	}
	var leaks strings.Builder
	for _, l := range after.links {
		if !slices.Contains(before.links, l) && (strict || l.ours()) {
			fmt.Fprintf(&leaks, "  link %s\n", l.name)
		}
	}
	for _, tb := range after.tables {
		if !slices.Contains(before.tables, tb) && (strict || ourTable(tb)) {
			fmt.Fprintf(&leaks, "  nftables %s\n", tb)
		}
	}
	for _, n := range after.named {
		if !slices.Contains(before.named, n) && (strict || ourNamed(n)) {
			fmt.Fprintf(&leaks, "  named namespace %s\n", filepath.Join(dirPath(machineEnv.dir), n))
		}
	}
	if leaks.Len() > 0 {
		t.Errorf("nstest: the machine's own namespace changed during the test:\n%s", leaks.String())
	}
}

// Main runs the tests and then the process-wide leak checks that cannot run
// per test while tests run in parallel: open descriptors and goroutines must
// be back to where they were before the tests (polled for a few seconds, as
// both go away asynchronously), and every thread of the process must be in
// the process's own namespace. A failed check fails the run.
//
// Without the privileges to make namespaces (and outside CI) the package's
// Examples are skipped, as the tests are.
//
//	func TestMain(m *testing.M) { nstest.Main(m) }
func Main(m *testing.M) {
	skipExamples()
	// nsnet's lock files go to a directory of this run's, which goes with
	// it, not to the machine's /run/nsnet/locks; child processes the tests
	// start inherit it.
	var lockDir string
	if os.Getenv(keylock.DirEnv) == "" {
		if d, err := os.MkdirTemp("", "nsnet-locks-"); err == nil {
			os.Setenv(keylock.DirEnv, d)
			lockDir = d
		}
	}
	// Start the runtime's poller before counting, so that its descriptors
	// are part of the baseline.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	// And the machine check's handle of the process's namespace, which
	// lives as long as the process.
	readMachine()
	fds := countFDs()
	goroutines := countGoroutines()

	code := m.Run()
	if code == 0 {
		if msg := settle(fds, goroutines); msg != "" {
			fmt.Fprintln(os.Stderr, "nstest.Main: "+msg)
			code = 1
		}
	}
	if lockDir != "" {
		os.RemoveAll(lockDir)
	}
	os.Exit(code)
}

func settle(fds, goroutines int) string {
	var msg string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		msg = ""
		if n := countFDs(); n > fds {
			msg += fmt.Sprintf("%d descriptors open, %d before the tests: %s\n", n, fds, listFDs())
		}
		if n := countGoroutines(); n > goroutines {
			msg += fmt.Sprintf("%d goroutines, %d before the tests:\n%s\n", n, goroutines, stacks())
		}
		if bad := foreignThreads(); bad != "" {
			msg += "threads in a foreign network namespace: " + bad + "\n"
		}
		if msg == "" || time.Now().After(deadline) {
			return msg
		}
	}
}

func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// countGoroutines counts the goroutines, less those that live as long as
// the process once started (the os/signal loop of the fuzzing engine).
func countGoroutines() int {
	n := 0
	for _, g := range strings.Split(stacks(), "\n\n") {
		if !strings.Contains(g, "os/signal.signal_recv") {
			n++
		}
	}
	return n
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents) - 1 // less the directory being read
}

func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return strings.Join(out, " ")
}

// foreignThreads lists the threads whose network namespace is not the one
// the process started in (CNI's check that no thread is left in a closed namespace).
func foreignThreads() string {
	cur, err := netns.Current()
	if err != nil {
		return err.Error()
	}
	self := cur.ID().String()
	cur.Close()
	tasks, _ := os.ReadDir("/proc/self/task")
	var bad []string
	for _, task := range tasks {
		ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		if ns != self {
			bad = append(bad, task.Name()+":"+ns)
		}
	}
	return strings.Join(bad, " ")
}
