package macvlan

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// crashEnv makes the test binary a crash child (see TestMain).
const crashEnv = "NSNET_MACVLAN_CRASH"

func fileAlloc(t testing.TB, dir string) *ipam.Allocator {
	t.Helper()
	st, err := ipam.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a, err := ipam.New(st, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// crashChild runs one call (NSNET_OP) and, when it reaches step
// NSNET_STEP, says so on stdout and waits to be killed.
func crashChild() {
	ctx := context.Background()
	done := func(err error) { fmt.Println("done", err); os.Exit(0) }
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		done(err)
	}
	st, err := ipam.OpenFileStore(os.Getenv("NSNET_STORE"))
	if err != nil {
		done(err)
	}
	alloc, err := ipam.New(st, ipam.Config{})
	if err != nil {
		done(err)
	}
	if os.Getenv("NSNET_OP") == "new-race" {
		// Each line is the go for a round: both children create the
		// network it names at once.
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			n, err := New(ctx, host, alloc, Config{Name: sc.Text(), Parent: "eth0"})
			if err != nil {
				fmt.Println("err", err)
				continue
			}
			fmt.Println("ok", n.Config().Subnets[0].Subnet)
		}
		os.Exit(0)
	}
	name, at := "crash", os.Getenv("NSNET_STEP")
	stepHooks.Store(name, func(s string) error {
		if s == at {
			fmt.Println("at", s)
			select {}
		}
		return nil
	})
	ctr, err := netns.Open(os.Getenv("NSNET_CTR"))
	if err != nil {
		done(err)
	}
	switch op := os.Getenv("NSNET_OP"); op {
	case "new":
		_, err = New(ctx, host, alloc, crashConfig())
	default:
		var n *Network
		if n, err = Open(ctx, host, alloc, name); err != nil {
			break
		}
		switch op {
		case "attach":
			_, err = n.Attach(ctx, EndpointConfig{ID: "c1", NS: ctr})
		case "detach":
			err = n.Detach(ctx, "c1", ctr)
		case "delete":
			err = n.Delete(ctx, false)
		}
	}
	done(err)
}

func crashConfig() Config { return Config{Name: "crash", Parent: "eth0", Subnets: s10()} }

var crashPoints = map[string][]string{
	"new":    {"anchor-created", "anchor"},
	"attach": {"allocate", "link"},
	"detach": {"unplug"},
	"delete": {"delete-pool"},
}

// TestCrashPoints kills a child process (SIGKILL) at every step of New,
// Attach, Detach and Delete, several rounds; after the recovery recipe
// (GC with what is live, New of the live networks) the kernel and the
// store hold exactly the acknowledged state, and attaching again gives
// working endpoints.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	c1, c2 := nstest.Container(t, host), nstest.Container(t, host)
	for round := range 3 {
		for _, op := range []string{"new", "attach", "detach", "delete"} {
			for _, at := range crashPoints[op] {
				what := fmt.Sprintf("round %d, %s killed at %s", round, op, at)
				live := Live{Networks: []string{}, Namespaces: []*netns.NS{c1, c2}}
				if op != "new" {
					n, err := New(t.Context(), host, alloc, crashConfig())
					if err != nil {
						t.Fatalf("%s: setup: %v", what, err)
					}
					live.Networks = []string{"crash"}
					if op == "detach" {
						if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1}); err != nil {
							t.Fatalf("%s: setup: %v", what, err)
						}
					}
				}
				cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), crashEnv+"=1", "NSNET_OP="+op, "NSNET_STEP="+at,
					fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()),
					fmt.Sprintf("NSNET_CTR=/proc/%d/fd/%d", os.Getpid(), c1.Fd()),
					"NSNET_STORE="+dir)
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				line, _ := bufio.NewReader(out).ReadString('\n')
				cmd.Process.Signal(syscall.SIGKILL)
				cmd.Wait()
				if !strings.HasPrefix(line, "at "+at) {
					t.Fatalf("%s: the child said %q, want it at %s", what, line, at)
				}

				if _, err := GC(t.Context(), host, alloc, live); err != nil {
					t.Fatalf("%s: GC: %v", what, err)
				}
				for range live.Networks {
					if _, err := New(t.Context(), host, alloc, crashConfig()); err != nil {
						t.Fatalf("%s: New of a live network: %v", what, err)
					}
				}
				checkModel(t, what, host, alloc, live, c1, c2)

				n, err := New(t.Context(), host, alloc, crashConfig())
				if err != nil {
					t.Fatalf("%s: New after recovery: %v", what, err)
				}
				e1, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1})
				if err != nil {
					t.Fatalf("%s: Attach after recovery: %v", what, err)
				}
				if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c2", NS: c2}); err != nil {
					t.Fatalf("%s: Attach after recovery: %v", what, err)
				}
				mustPing(t, what+": c2 to c1", c2, e1.Addrs[0].Addr())
				if err := n.Delete(t.Context(), true); err != nil {
					t.Fatal(err)
				}
				checkModel(t, what+", after the cleanup", host, alloc, Live{Networks: []string{}}, c1, c2)
			}
		}
	}
}

// checkModel fails t unless host, the containers and alloc hold exactly
// the networks of live (anchor, pool) and no endpoint: no other link with
// nsnet's group, no other pool, no allocation.
func checkModel(t *testing.T, what string, host *netns.NS, alloc *ipam.Allocator, live Live, ctrs ...*netns.NS) {
	t.Helper()
	infos, err := List(t.Context(), host, alloc)
	if err != nil {
		t.Fatal(err)
	}
	var nets []string
	for _, i := range infos {
		nets = append(nets, i.Name)
		if len(i.Endpoints) > 0 {
			t.Errorf("%s: network %s has endpoints %+v", what, i.Name, i.Endpoints)
		}
	}
	if !slices.Equal(nets, live.Networks) && len(nets)+len(live.Networks) > 0 {
		t.Errorf("%s: networks %v, want %v", what, nets, live.Networks)
	}
	count := func(ns *netns.NS) int {
		links, err := ns.Links()
		if err != nil {
			t.Fatal(err)
		}
		c := 0
		for _, l := range links {
			if ctrlink.IsGroup(l.Attrs().Group) {
				c++
			}
		}
		return c
	}
	if c := count(host); c != len(live.Networks) {
		t.Errorf("%s: %d links of nsnet in the host, want %d", what, c, len(live.Networks))
	}
	for _, c := range ctrs {
		if got := nstest.LinkNames(t, c); len(got) != 1 {
			t.Errorf("%s: container %s has %v, want lo only", what, c, got)
		}
	}
	pools, err := alloc.Pools(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pools {
		names = append(names, strings.TrimPrefix(p.Name, poolPrefix))
		if _, allocs, _ := alloc.Inspect(t.Context(), p.Name); len(allocs) > 0 {
			t.Errorf("%s: pool %s has allocations %+v", what, p.Name, allocs)
		}
	}
	if !slices.Equal(names, live.Networks) && len(names)+len(live.Networks) > 0 {
		t.Errorf("%s: pools %v, want those of %v", what, names, live.Networks)
	}
}
