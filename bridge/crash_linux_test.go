package bridge

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// crashChild runs one call (NSNET_OP) on network NSNET_NET and, when the
// call reaches step NSNET_STEP, says so on stdout and waits to be killed.
func crashChild(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) {
	name, at := os.Getenv("NSNET_NET"), os.Getenv("NSNET_STEP")
	stepHooks.Store(name, func(s string) error {
		if s == at {
			fmt.Println("at", s)
			select {}
		}
		return nil
	})
	cfg := Config{Name: name, Subnets: subnet("10.44.0.0/24", "")}
	var err error
	switch op := os.Getenv("NSNET_OP"); op {
	case "new":
		_, err = New(ctx, host, alloc, cfg)
	default:
		var n *Network
		if n, err = Open(ctx, host, alloc, name); err != nil {
			break
		}
		switch op {
		case "attach":
			var ctr *netns.NS
			if ctr, err = netns.Open(os.Getenv("NSNET_CTR")); err == nil {
				_, err = n.Attach(ctx, EndpointConfig{ID: "c1", NS: ctr})
			}
		case "detach":
			err = n.Detach(ctx, "c1")
		case "delete":
			err = n.Delete(ctx, false)
		}
	}
	fmt.Println("done", err)
}

// crashPoints are the steps of each call at which the harness kills it.
var crashPoints = map[string][]string{
	"new":    {"bridge", "pool", "address"},
	"attach": {"allocate", "veth", "mark", "port"},
	"detach": {"unplug"},
	"delete": {"delete-pool"},
}

// TestCrashPoints kills a child process (SIGKILL) at every step of New,
// Attach, Detach and Delete, several rounds. After the documented recovery
// (GC with what is live: the calls that were acknowledged), the kernel and
// the store hold exactly the acknowledged state, and attaching again gives
// working endpoints.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	const name = "crash"
	cfg := Config{Name: name, Subnets: subnet("10.44.0.0/24", "")}
	c1, c2 := nstest.Container(t, host), nstest.Container(t, host)
	ops := []string{"new", "attach", "detach", "delete"}
	for round := range 3 {
		for _, op := range ops {
			for _, at := range crashPoints[op] {
				what := fmt.Sprintf("round %d, %s killed at %s", round, op, at)
				// The state the call starts from, acknowledged.
				var live Live
				if op != "new" {
					n, err := New(t.Context(), host, alloc, cfg)
					if err != nil {
						t.Fatalf("%s: setup: %v", what, err)
					}
					live.Networks = []string{name}
					if op == "detach" {
						if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1}); err != nil {
							t.Fatalf("%s: setup: %v", what, err)
						}
					}
				} else {
					live.Networks = []string{}
				}
				cmd := childCmd(t, "crash", host, dir, "NSNET_OP="+op, "NSNET_STEP="+at, "NSNET_NET="+name,
					fmt.Sprintf("NSNET_CTR=/proc/%d/fd/%d", os.Getpid(), c1.Fd()))
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				line, _ := bufio.NewReader(out).ReadString('\n')
				if !strings.HasPrefix(line, "at "+at) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("%s: the child said %q, want it at %s", what, line, at)
				}
				cmd.Process.Signal(syscall.SIGKILL)
				cmd.Wait()

				// The recovery: GC with what is live. The killed call was
				// not acknowledged: its objects are not live (the
				// orchestrator re-issues it, or wanted them gone).
				// A killed Delete leaves the network live: the recipe
				// repairs it (the orchestrator may delete it again).
				if _, err := GC(t.Context(), host, alloc, live); err != nil {
					t.Fatalf("%s: GC: %v", what, err)
				}
				for range live.Networks {
					if _, err := New(t.Context(), host, alloc, cfg); err != nil {
						t.Fatalf("%s: New of a live network: %v", what, err)
					}
				}
				checkModel(t, what, host, alloc, live)
				if op != "new" {
					n, err := Open(t.Context(), host, alloc, name)
					if err != nil {
						t.Fatal(err)
					}
					if err := n.Check(t.Context()); err != nil {
						t.Errorf("%s: Check after the recovery: %v", what, err)
					}
				}

				// Attaching again works: the network (made again if
				// needed), two containers, traffic.
				n, err := New(t.Context(), host, alloc, cfg)
				if err != nil {
					t.Fatalf("%s: New after recovery: %v", what, err)
				}
				_, e1 := attach(t, n, "c1", EndpointConfig{NS: c1})
				attach(t, n, "c2", EndpointConfig{NS: c2})
				mustPing(t, what+": c2 to c1", c2, e1.Addrs[0].Addr())
				if err := n.Delete(t.Context(), true); err != nil {
					t.Fatalf("%s: Delete: %v", what, err)
				}
				checkModel(t, what+", after the cleanup", host, alloc, Live{Networks: []string{}})
			}
		}
	}
}

// checkModel fails t unless host and alloc hold exactly live: its networks
// (each with its pool, its bridge marked) and its endpoints (a marked
// veth, an allocation), and no other link with nsnet's group, no other
// pool, no other allocation.
func checkModel(t *testing.T, what string, host *netns.NS, alloc *ipam.Allocator, live Live) {
	t.Helper()
	infos, err := List(t.Context(), host, alloc)
	if err != nil {
		t.Fatal(err)
	}
	var nets, eps []string
	for _, i := range infos {
		nets = append(nets, i.Name)
		for _, e := range i.Endpoints {
			eps = append(eps, i.Name+"/"+e.ID)
		}
	}
	var wantEPs []string
	for _, e := range live.Endpoints {
		wantEPs = append(wantEPs, e.Network+"/"+e.ID)
	}
	if !slices.Equal(nets, live.Networks) && len(nets)+len(live.Networks) > 0 {
		t.Errorf("%s: networks %v, want %v", what, nets, live.Networks)
	}
	if !slices.Equal(eps, wantEPs) {
		t.Errorf("%s: endpoints %v, want %v", what, eps, wantEPs)
	}
	links, err := host.Links()
	if err != nil {
		t.Fatal(err)
	}
	ours := 0
	for _, l := range links {
		if ctrlink.IsGroup(l.Attrs().Group) {
			ours++
		}
	}
	if ours != len(live.Networks)+len(live.Endpoints) {
		t.Errorf("%s: %d links with nsnet's group, want %d: %v", what, ours, len(live.Networks)+len(live.Endpoints), nstest.LinkNames(t, host))
	}
	pools, err := alloc.Pools(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pools {
		names = append(names, strings.TrimPrefix(p.Name, "bridge."))
		_, allocs, err := alloc.Inspect(t.Context(), p.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range allocs {
			if !slices.Contains(wantEPs, a.Owner) {
				t.Errorf("%s: allocation of %s, which is not live", what, a.Owner)
			}
		}
	}
	if !slices.Equal(names, live.Networks) && len(names)+len(live.Networks) > 0 {
		t.Errorf("%s: pools %v, want those of %v", what, names, live.Networks)
	}
}
