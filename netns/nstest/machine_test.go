//go:build linux

package nstest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeMachine is a sandbox that the machine checks are pointed at, with a
// run directory of its own, and what "other processes" do there.
type fakeMachine struct {
	t   *testing.T
	ns  *netns.NS
	h   *netlink.Handle
	dir netns.Dir
}

func newFakeMachine(t *testing.T) *fakeMachine {
	t.Setenv("NSTEST_STRICT", "") // the default check, whatever the run's
	m := &fakeMachine{t: t, ns: nstest.Host(t), dir: nstest.Dir(t)}
	var err error
	if m.h, err = m.ns.Netlink(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nstest.UseMachine(m.ns, m.dir))
	return m
}

func (m *fakeMachine) addLink(name, alias string) {
	m.t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := m.h.LinkAdd(br); err != nil {
		m.t.Fatalf("link %s: %v", name, err)
	}
	if alias != "" {
		if err := m.h.LinkSetAlias(br, alias); err != nil {
			m.t.Fatalf("link %s: %v", name, err)
		}
	}
}

func (m *fakeMachine) delLink(name string) {
	if l, err := m.h.LinkByName(name); err == nil {
		m.h.LinkDel(l)
	}
}

func (m *fakeMachine) table(family nftables.TableFamily, name string, add bool) {
	m.t.Helper()
	err := m.ns.NFTables(func(c *nftables.Conn) error {
		tb := &nftables.Table{Family: family, Name: name}
		if add {
			c.AddTable(tb)
		} else {
			c.DelTable(tb)
		}
		return c.Flush()
	})
	if err != nil && add {
		m.t.Fatalf("table %s: %v", name, err)
	}
}

func (m *fakeMachine) named(name string) {
	m.t.Helper()
	ns, err := m.dir.New(name)
	if err != nil {
		m.t.Fatal(err)
	}
	ns.Close()
}

// churn is another process at work on the machine: until stop is closed,
// it creates and deletes named namespaces, links and tables there.
func (m *fakeMachine) churn(stop chan struct{}) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprint("cni-churn-", i)
			if ns, err := m.dir.New(name); err == nil {
				ns.Close()
			}
			m.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "churn0"}})
			m.ns.NFTables(func(c *nftables.Conn) error {
				c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "churn"})
				return c.Flush()
			})
			m.dir.Delete(name)
			m.delLink("churn0")
			m.table(nftables.TableFamilyIPv4, "churn", false)
		}
	})
	return wg.Wait
}

// TestMachineIgnoresOtherProcesses: while another process creates and
// deletes named namespaces, links and tables on the machine, and leaves
// some there, a test that leaked nothing passes; a Strict check reports
// what the other process left.
func TestMachineIgnoresOtherProcesses(t *testing.T) {
	// Not parallel: it points the machine checks at a sandbox.
	m := newFakeMachine(t)
	stop := make(chan struct{})
	wait := m.churn(stop)
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }); wait() }
	defer halt()

	rec := &recorder{TB: t}
	host := nstest.Host(rec)
	ctr := nstest.Container(rec, host)
	nstest.Machine(rec) // a second, direct check, as an example's test makes
	if host.Equal(ctr) {
		t.Fatal("container is the host")
	}
	// What the other process leaves: Docker's and a CNI plugin's objects.
	m.addLink("docker0", "")
	m.addLink("br-0123456789ab", "")
	m.addLink("veth1a2b3c4", "")
	m.table(nftables.TableFamilyIPv4, "filter", true)
	m.table(nftables.TableFamilyINet, "firewalld", true)
	m.named("cni-1234")
	if got := rec.finish(); got != "" {
		t.Errorf("a test that leaked nothing failed for another process's objects:\n%s", got)
	}

	strict := &recorder{TB: t}
	nstest.Machine(strict, nstest.Strict)
	m.addLink("docker1", "")
	m.table(nftables.TableFamilyIPv4, "nat", true)
	m.named("cni-5678")
	got := strict.finish()
	for _, want := range []string{"link docker1", "nftables table ip nat", "named namespace " + filepath.Join(string(m.dir), "cni-5678")} {
		if !strings.Contains(got, want) {
			t.Errorf("strict report %q lacks %q", got, want)
		}
	}

	halt()
	for _, l := range []string{"docker0", "docker1", "br-0123456789ab", "veth1a2b3c4"} {
		m.delLink(l)
	}
	m.table(nftables.TableFamilyIPv4, "filter", false)
	m.table(nftables.TableFamilyINet, "firewalld", false)
	m.table(nftables.TableFamilyIPv4, "nat", false)
	m.dir.Delete("cni-1234")
	m.dir.Delete("cni-5678")
}

// TestMachineReportsLeaks: without Strict, what the test could have
// leaked is still reported: nsnet's table, a link with nsnet's mark or a
// name nsnet derives, a link or named namespace named by Name, and a
// fixture's namespace mounted in the run directory.
func TestMachineReportsLeaks(t *testing.T) {
	m := newFakeMachine(t)
	rec := &recorder{TB: t}
	nstest.Machine(rec)
	ctr := nstest.Container(rec, nstest.Host(rec))

	named, link := nstest.Name(t, "ns"), nstest.Name(t, "lk")
	m.addLink(link, "")
	m.addLink("mybr0", `{"nsnet":"bridge","name":"mybr"}`)
	m.addLink("ovvx2a", "")
	m.table(nftables.TableFamilyINet, "nsnet", true)
	m.named(named)
	mount := filepath.Join(string(m.dir), "ctr")
	if err := os.WriteFile(mount, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", ctr.Fd()), mount, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	got := rec.finish()
	for _, want := range []string{"link " + link, "link mybr0", "link ovvx2a", "nftables table inet nsnet",
		"named namespace " + filepath.Join(string(m.dir), named), "named namespace " + mount} {
		if !strings.Contains(got, want) {
			t.Errorf("report %q lacks %q", got, want)
		}
	}
	for _, l := range []string{link, "mybr0", "ovvx2a"} {
		m.delLink(l)
	}
	m.table(nftables.TableFamilyINet, "nsnet", false)
	m.dir.Delete(named)
	m.dir.Delete("ctr")
}
