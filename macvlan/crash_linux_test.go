package macvlan

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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
	fmt.Println("ready")
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
			err = n.Delete(ctx, true)
		}
	}
	done(err)
}

func crashConfig() Config { return Config{Name: "crash", Parent: "eth0", Subnets: s10()} }

var crashPoints = map[string][]string{
	"new":    {"anchor-created", "anchor"},
	"attach": {"begin", "allocate", "claim", "link"},
	"detach": {"unplug", "unclaim"},
	"delete": {"checked", "delete-pool"},
}

// TestCrashPoints kills a child process (SIGKILL) at every step of New,
// Attach, Detach and Delete, three rounds, and then at random moments of
// those calls, more than a hundred kills in all. After the recovery
// recipe (GC with what is live: the calls acknowledged, then New of the
// live networks) the kernel and the store hold exactly the acknowledged
// state, and (every few kills) attaching again gives working endpoints.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	c1, c2 := nstest.Container(t, host), nstest.Container(t, host)
	ops := []string{"new", "attach", "detach", "delete"}
	type kill struct{ op, at string }
	var kills []kill
	for range 3 {
		for _, op := range ops {
			for _, at := range crashPoints[op] {
				kills = append(kills, kill{op, at})
			}
		}
	}
	killed, tries := 0, 0
	for i := 0; killed < 110; i++ {
		kl := kill{ops[i%len(ops)], "-"} // at a random moment
		if i < len(kills) {
			kl = kills[i]
		}
		if tries++; tries > 400 {
			t.Fatalf("%d kills in %d tries", killed, tries)
		}
		what := fmt.Sprintf("kill %d: %s killed at %s", i, kl.op, kl.at)
		// The state the call starts from, acknowledged.
		live := Live{Networks: []string{}, Namespaces: []*netns.NS{c1, c2}}
		if kl.op != "new" {
			n, err := New(t.Context(), host, alloc, crashConfig())
			if err != nil {
				t.Fatalf("%s: setup: %v", what, err)
			}
			live.Networks = []string{"crash"}
			if kl.op == "detach" || kl.op == "delete" && i%2 == 1 {
				if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1}); err != nil {
					t.Fatalf("%s: setup: %v", what, err)
				}
			}
			if kl.op == "delete" && i%2 == 1 {
				live.Endpoints = []LiveEndpoint{{Network: "crash", ID: "c1", NS: c1}}
			}
		}
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"=1", "NSNET_OP="+kl.op, "NSNET_STEP="+kl.at,
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
		r := bufio.NewReader(out)
		line, _ := r.ReadString('\n')
		if line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s: the child said %q", what, line)
		}
		if kl.at == "-" {
			time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
			cmd.Process.Signal(syscall.SIGKILL)
			line, _ = r.ReadString('\n')
		} else {
			line, _ = r.ReadString('\n')
			cmd.Process.Signal(syscall.SIGKILL)
			if !strings.HasPrefix(line, "at "+kl.at) {
				cmd.Wait()
				t.Fatalf("%s: the child said %q, want it at %s", what, line, kl.at)
			}
		}
		cmd.Wait()
		if line == "done <nil>\n" {
			// Acknowledged before the kill.
			switch kl.op {
			case "new":
				live.Networks = []string{"crash"}
			case "attach":
				live.Endpoints = []LiveEndpoint{{Network: "crash", ID: "c1", NS: c1}}
			case "delete":
				live.Networks, live.Endpoints = []string{}, nil
			}
		} else if strings.HasPrefix(line, "done") {
			t.Fatalf("%s: the call failed: %s", what, line)
		} else {
			killed++
		}

		// The recovery: GC with what is live; the killed call was not
		// acknowledged, and its objects are not live (the orchestrator
		// re-issues it, or wanted them gone). A killed Delete leaves the
		// network live: the recipe repairs it.
		if _, err := GC(t.Context(), host, alloc, live); err != nil {
			t.Fatalf("%s: GC: %v", what, err)
		}
		for range live.Networks {
			n, err := New(t.Context(), host, alloc, crashConfig())
			if err != nil {
				t.Fatalf("%s: New of a live network: %v", what, err)
			}
			for _, e := range live.Endpoints {
				if _, err := n.Attach(t.Context(), EndpointConfig{ID: e.ID, NS: e.NS}); err != nil {
					t.Fatalf("%s: Attach of a live endpoint: %v", what, err)
				}
			}
		}
		checkModel(t, what, host, alloc, live, c1, c2)

		n, err := New(t.Context(), host, alloc, crashConfig())
		if err != nil {
			t.Fatalf("%s: New after recovery: %v", what, err)
		}
		if i%4 == 0 || i < len(kills) {
			// Attaching again works: two containers, traffic.
			e1, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1})
			if err != nil {
				t.Fatalf("%s: Attach after recovery: %v", what, err)
			}
			if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c2", NS: c2}); err != nil {
				t.Fatalf("%s: Attach after recovery: %v", what, err)
			}
			mustPing(t, what+": c2 to c1", c2, e1.Addrs[0].Addr())
		}
		if err := n.Delete(t.Context(), true); err != nil {
			t.Fatal(err)
		}
		checkModel(t, what+", after the cleanup", host, alloc, Live{Networks: []string{}}, c1, c2)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d kills in %d calls", killed, tries)
}

// checkModel fails t unless host, the containers and alloc hold exactly
// the networks of live (anchor, pool) and its endpoints (an interface in
// the container, an allocation, the anchor's record): no other link with
// nsnet's group, no other pool, allocation or record.
func checkModel(t *testing.T, what string, host *netns.NS, alloc *ipam.Allocator, live Live, ctrs ...*netns.NS) {
	t.Helper()
	infos, err := List(t.Context(), host, alloc)
	if err != nil {
		t.Fatal(err)
	}
	var nets, eps, wantEPs []string
	for _, i := range infos {
		nets = append(nets, i.Name)
		for _, e := range i.Endpoints {
			eps = append(eps, i.Name+"/"+e.ID)
		}
	}
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
	c := 0
	for _, l := range links {
		if !ctrlink.IsGroup(l.Attrs().Group) {
			continue
		}
		c++
		var records []string
		for holder := range byID(claimsOf(l)) {
			records = append(records, "crash/"+holder)
		}
		slices.Sort(records)
		if !slices.Equal(records, wantEPs) {
			t.Errorf("%s: %s records %v, want %v", what, l.Attrs().Name, records, wantEPs)
		}
	}
	if c != len(live.Networks) {
		t.Errorf("%s: %d links of nsnet in the host, want %d", what, c, len(live.Networks))
	}
	for _, ctr := range ctrs {
		want := 1
		if slices.ContainsFunc(live.Endpoints, func(e LiveEndpoint) bool { return e.NS == ctr }) {
			want = 2
		}
		if got := nstest.LinkNames(t, ctr); len(got) != want {
			t.Errorf("%s: container %s has %v, want %d links", what, ctr, got, want)
		}
	}
	pools, err := alloc.Pools(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pools {
		names = append(names, strings.TrimPrefix(p.Name, poolPrefix))
		_, allocs, _ := alloc.Inspect(t.Context(), p.Name)
		for _, a := range allocs {
			if !slices.Contains(wantEPs, a.Owner) {
				t.Errorf("%s: pool %s has an allocation of %s, which is not live", what, p.Name, a.Owner)
			}
		}
	}
	if !slices.Equal(names, live.Networks) && len(names)+len(live.Networks) > 0 {
		t.Errorf("%s: pools %v, want those of %v", what, names, live.Networks)
	}
}
