package bridge

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// crashChild runs one call (NSNET_OP) on network NSNET_NET, saying "start"
// on stdout first and "done" and its error last, and, when the call reaches
// step NSNET_STEP (if given), says so and waits to be killed.
func crashChild(ctx context.Context, host *netns.NS, alloc *ipam.Allocator) {
	name, at := os.Getenv("NSNET_NET"), os.Getenv("NSNET_STEP")
	stepHooks.Store(name, func(s string) error {
		if at != "" && s == at {
			fmt.Println("at", s)
			select {}
		}
		return nil
	})
	cfg := Config{Name: name, Subnets: subnet("10.44.0.0/24", "")}
	var err error
	fmt.Println("start")
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
	"attach": {"allocate", "veth", "mark", "guard", "port", "configure", "announce"},
	"detach": {"linkdel", "unplug"},
	"delete": {"delete-pool"},
}

// crashRounds and randomKills: each round kills every call at each of its
// steps, and randomKills more times after a random delay from its start
// (0-maxKillDelay), wherever it is then.
const (
	crashRounds  = 3
	randomKills  = 6
	maxKillDelay = 6 * time.Millisecond
)

// TestCrashPoints kills a child process (SIGKILL) at every step of New,
// Attach, Detach and Delete, and at random instants within each (seeded:
// the seed is logged, NSNET_CRASH_SEED repeats it), several rounds. After
// the documented recovery (GC with what is live: the calls that were
// acknowledged), the kernel, the nftables tables and the store hold
// exactly the acknowledged state, and attaching again gives working
// endpoints.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	const name = "crash"
	cfg := Config{Name: name, Subnets: subnet("10.44.0.0/24", "")}
	c1, c2 := nstest.Container(t, host), nstest.Container(t, host)
	seed := time.Now().UnixNano()
	if s := os.Getenv("NSNET_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seed %d (NSNET_CRASH_SEED=%d repeats it)", seed, seed)
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	ops := []string{"new", "attach", "detach", "delete"}
	kills, late := 0, 0
	for round := range crashRounds {
		for _, op := range ops {
			points := slices.Clone(crashPoints[op])
			for range randomKills {
				points = append(points, "")
			}
			for _, at := range points {
				var delay time.Duration
				what := fmt.Sprintf("round %d, %s killed at %s", round, op, at)
				if at == "" {
					delay = time.Duration(rnd.Int64N(int64(maxKillDelay)))
					what = fmt.Sprintf("round %d, %s killed %v after its start", round, op, delay)
				}
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
				r := bufio.NewReader(out)
				if line, _ := r.ReadString('\n'); line != "start\n" {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("%s: the child said %q, want start", what, line)
				}
				if at != "" {
					if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "at "+at) {
						cmd.Process.Kill()
						cmd.Wait()
						t.Fatalf("%s: the child said %q, want it at %s", what, line, at)
					}
				} else {
					time.Sleep(delay)
				}
				cmd.Process.Signal(syscall.SIGKILL)
				rest, _ := io.ReadAll(r)
				cmd.Wait()
				// A call that said it was done before the kill was
				// acknowledged: its effect is live.
				if at == "" && strings.HasPrefix(string(rest), "done") {
					late++
				} else {
					kills++
				}
				if at == "" && strings.HasPrefix(string(rest), "done <nil>") {
					switch op {
					case "new":
						live.Networks = []string{name}
					case "attach":
						live.Endpoints = []LiveEndpoint{{name, "c1"}}
					case "delete":
						live.Networks = []string{}
					}
				}

				// The recovery: GC with what is live. The killed call was
				// not acknowledged: its objects are not live (the
				// orchestrator re-issues it, or wanted them gone).
				// A killed Delete leaves the network live: the recipe
				// repairs it (the orchestrator may delete it again).
				if _, err := GC(t.Context(), host, alloc, live); err != nil {
					t.Fatalf("%s: GC: %v", what, err)
				}
				for range live.Networks {
					n, err := New(t.Context(), host, alloc, cfg)
					if err != nil {
						t.Fatalf("%s: New of a live network: %v", what, err)
					}
					for _, ep := range live.Endpoints {
						if _, err := n.Attach(t.Context(), EndpointConfig{ID: ep.ID, NS: c1}); err != nil {
							t.Fatalf("%s: Attach of a live endpoint: %v", what, err)
						}
					}
				}
				checkModel(t, what, host, alloc, live)
				if len(live.Networks) > 0 {
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
	t.Logf("%d kills within a call, %d calls done before their kill", kills, late)
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
	// nftables: the isolation entries of the live networks' bridges, the
	// guards of the live endpoints' ports, and nothing else.
	var bridges []string
	for _, i := range infos {
		bridges = append(bridges, i.Bridge)
	}
	if got := isolationEntriesOrNone(t, host); !sameSet(got, bridges) {
		t.Errorf("%s: isolation entries of %v, want of %v", what, got, bridges)
	}
	var ports []int
	for _, l := range links {
		if m, ok := decodeEPMark(l.Attrs().Alias); ok && slices.Contains(wantEPs, m.Net+"/"+m.ID) {
			ports = append(ports, l.Attrs().Index)
		}
	}
	if got := guardedPorts(t, host); !sameSet(got, ports) {
		t.Errorf("%s: guarded ports %v, want %v", what, got, ports)
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

// sameSet reports whether a and b hold the same elements.
func sameSet[E cmp.Ordered](a, b []E) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// isolationEntriesOrNone is isolationEntries, or none without the table.
func isolationEntriesOrNone(t testing.TB, ns *netns.NS) []string {
	t.Helper()
	missing := false
	ns.NFTables(func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily(nft.TableName, nftables.TableFamilyINet)
		missing = err != nil
		return nil
	})
	if missing {
		return nil
	}
	return isolationEntries(t, ns)
}

// guardedPorts returns the interface indexes of the ports that nsnet's
// bridge table in ns guards (none without the table).
func guardedPorts(t testing.TB, ns *netns.NS) []int {
	t.Helper()
	var idx []int
	err := ns.NFTables(func(c *nftables.Conn) error {
		tb := &nftables.Table{Name: nft.TableName, Family: nftables.TableFamilyBridge}
		if _, err := c.ListTableOfFamily(tb.Name, tb.Family); err != nil {
			return nil
		}
		s, err := c.GetSetByName(tb, "ports")
		if err != nil {
			return err
		}
		elems, err := c.GetSetElements(s)
		for _, e := range elems {
			if len(e.Key) >= 4 {
				idx = append(idx, int(binary.NativeEndian.Uint32(e.Key)))
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}
