package nstest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
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
	links, err := ns.Links()
	if err != nil {
		return s, err
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	addrs, err := ns.Addrs(nil, netlink.FAMILY_ALL)
	if err != nil {
		return s, err
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue // IPv6 link-local addresses come and go with their links
		}
		s.addrs = append(s.addrs, a.IPNet.String())
	}
	routes, err := ns.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return s, err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue
		}
		s.routes = append(s.routes, fmt.Sprintf("%v via %v dev %d", r.Dst, r.Gw, r.LinkIndex))
	}
	s.tables, err = tables(ns)
	if err != nil {
		return s, err
	}
	for _, l := range [][]string{s.links, s.addrs, s.routes, s.tables} {
		slices.Sort(l)
	}
	return s, nil
}

func tables(ns *netns.NS) ([]string, error) {
	var out []string
	err := ns.NFTables(func(c *nftables.Conn) error {
		ts, err := c.ListTables()
		if err != nil {
			return err
		}
		for _, t := range ts {
			out = append(out, fmt.Sprintf("table %s %s", family(t.Family), t.Name))
		}
		return nil
	})
	return out, err
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
	state
	named []string
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
	root, err := netns.Current()
	if err != nil {
		return m, err
	}
	defer root.Close()
	links, err := root.Links()
	if err != nil {
		return m, err
	}
	for _, l := range links {
		m.links = append(m.links, l.Attrs().Name)
	}
	if m.tables, err = tables(root); err != nil {
		return m, err
	}
	m.named, err = netns.Dir("").List()
	return m, err
}

func (before machine) check(t testing.TB) {
	t.Helper()
	after, err := readMachine()
	if err != nil {
		t.Errorf("nstest: reading the machine's own namespace: %v", err)
		return
	}
	leaks := after.minus(before.state)
	for _, n := range after.named {
		if !slices.Contains(before.named, n) {
			leaks += fmt.Sprintf("  named namespace %s\n", filepath.Join(netns.DefaultDir, n))
		}
	}
	if leaks != "" {
		t.Errorf("nstest: the machine's own namespace changed during the test:\n%s", leaks)
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
	// Start the runtime's poller before counting, so that its descriptors
	// are part of the baseline.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fds := countFDs()
	goroutines := countGoroutines()

	code := m.Run()
	if code == 0 {
		if msg := settle(fds, goroutines); msg != "" {
			fmt.Fprintln(os.Stderr, "nstest.Main: "+msg)
			code = 1
		}
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
