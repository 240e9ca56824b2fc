package stack_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet/internal/ctrlink"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/nsnet/nsnet/stack"
)

// crashEnv makes the test binary a crash child (see TestMain).
const crashEnv = "NSNET_STACK_CRASH"

// crashOp is one step of the script a crash child runs round and round:
// a runtime's day on one network with two containers.
type crashOp struct {
	verb string // create, run, stop, delete
	arg  string // the container's ID
}

var crashScript = []crashOp{
	{"create", ""}, {"run", "a"}, {"run", "b"}, {"stop", "a"},
	{"run", "a"}, {"stop", "b"}, {"stop", "a"}, {"delete", ""},
}

const crashNet = "n1"

// crashModel is what the acknowledged calls made: the network, and the
// containers that run.
type crashModel struct {
	net  bool
	ctrs []string // sorted
}

func (m crashModel) apply(op crashOp) crashModel {
	m.ctrs = slices.Clone(m.ctrs)
	switch op.verb {
	case "create":
		m.net = true
	case "delete":
		m.net = false
	case "run":
		if !slices.Contains(m.ctrs, op.arg) {
			m.ctrs = append(m.ctrs, op.arg)
			slices.Sort(m.ctrs)
		}
	case "stop":
		m.ctrs = slices.DeleteFunc(m.ctrs, func(s string) bool { return s == op.arg })
	}
	return m
}

func (m crashModel) equal(o crashModel) bool { return m.net == o.net && slices.Equal(m.ctrs, o.ctrs) }

func (m crashModel) String() string { return fmt.Sprintf("{net %v, running %v}", m.net, m.ctrs) }

var crashCtrIDs = []string{"a", "b"}

func crashContainer(id string, ns *netns.NS) stack.ContainerConfig {
	c := stack.ContainerConfig{ID: id, NS: ns, Networks: []stack.Attachment{{Network: crashNet}}}
	if id == "a" {
		c.Ports = []portmap.Mapping{{HostPort: 18080, CtrPort: 80}}
	}
	return c
}

// crashChild opens the stack (the recovery, which may be killed too) and
// runs the script from NSNET_START round and round, saying "ack i" after
// each call that returned, until it is killed.
func crashChild() {
	fail := func(err error) {
		fmt.Println("err", err)
		os.Exit(0)
	}
	fmt.Println("start")
	ctx := context.Background()
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		fail(err)
	}
	ctrs := map[string]*netns.NS{}
	for i, p := range strings.Split(os.Getenv("NSNET_CTRS"), ",") {
		if ctrs[crashCtrIDs[i]], err = netns.Open(p); err != nil {
			fail(err)
		}
	}
	s, err := stack.Open(ctx, host, stack.Config{StateDir: os.Getenv("NSNET_DIR"), Upstreams: []netip.AddrPort{}})
	if err != nil {
		fail(err)
	}
	i, _ := strconv.Atoi(os.Getenv("NSNET_START"))
	for ; ; i = (i + 1) % len(crashScript) {
		switch op := crashScript[i]; op.verb {
		case "create":
			_, err = s.CreateNetwork(ctx, stack.NetworkConfig{Name: crashNet, Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.47.0.0/24")}}})
		case "run":
			_, err = s.Run(ctx, crashContainer(op.arg, ctrs[op.arg]))
		case "stop":
			err = s.Stop(ctx, op.arg)
		case "delete":
			err = s.DeleteNetwork(ctx, crashNet)
		}
		if err != nil {
			fail(fmt.Errorf("step %d: %w", i, err))
		}
		fmt.Println("ack", i)
	}
}

// TestCrashRecovery kills a process that uses a Stack (SIGKILL) at random
// moments of its calls, Open (the recovery) included, many times. After
// each kill, Open in a new process must succeed and give exactly the
// acknowledged state, or that and the call that was cut short; the
// kernel and the table must hold that state and nothing else, and the
// running containers must pass traffic. The next child re-issues the call
// that was cut short, as an orchestrator would.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	dir := filepath.Join(t.TempDir(), "state")
	ctrs := map[string]*netns.NS{"a": nstest.Container(t, host), "b": nstest.Container(t, host)}
	var paths []string
	for _, id := range crashCtrIDs {
		paths = append(paths, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ctrs[id].Fd()))
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	rounds := 100
	if testing.Short() {
		rounds = 20
	}
	var model crashModel
	next := 0
	for round := range rounds {
		delay := time.Duration(rng.Int64N(int64(60 * time.Millisecond)))
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"=1",
			fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()),
			"NSNET_DIR="+dir, "NSNET_CTRS="+strings.Join(paths, ","), "NSNET_START="+strconv.Itoa(next))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(out)
		if line, _ := r.ReadString('\n'); line != "start\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: the child said %q", round, line)
		}
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		rest, _ := io.ReadAll(r)
		cmd.Wait()
		acked := 0
		for _, line := range strings.Split(strings.TrimSpace(string(rest)), "\n") {
			switch f := strings.Fields(line); {
			case len(f) == 0:
			case f[0] == "ack":
				model = model.apply(crashScript[next])
				next = (next + 1) % len(crashScript)
				acked++
			default:
				t.Fatalf("round %d: the child said %q", round, line)
			}
		}
		cut := model.apply(crashScript[next])
		what := fmt.Sprintf("round %d (killed after %v, %d calls acknowledged, %v cut short; acknowledged %v)", round, delay, acked, crashScript[next], model)

		s, err := stack.Open(t.Context(), host, stack.Config{StateDir: dir, Upstreams: []netip.AddrPort{}})
		if err != nil {
			t.Fatalf("%s: Open: %v", what, err)
		}
		got := stackModel(t, s)
		if !got.equal(model) && !got.equal(cut) {
			s.Close()
			t.Fatalf("%s: the stack holds %v", what, got)
		}
		checkKernel(t, what, s, host, ctrs, got)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		model = got
		if got.equal(cut) && !cut.equal(model) {
			next = (next + 1) % len(crashScript)
		}
	}

	// Down to nothing, and nothing left.
	s := open(t, host, dir)
	for _, id := range crashCtrIDs {
		if err := s.Stop(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNetwork(t.Context(), crashNet); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, "at the end", s, host, ctrs, crashModel{})
}

// stackModel is what s says it holds.
func stackModel(t *testing.T, s *stack.Stack) crashModel {
	t.Helper()
	var m crashModel
	nws, err := s.Networks()
	if err != nil {
		t.Fatal(err)
	}
	for _, nw := range nws {
		if nw.Name != crashNet {
			t.Fatalf("network %s", nw.Name)
		}
		m.net = true
	}
	cs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		m.ctrs = append(m.ctrs, c.ID)
	}
	return m
}

// checkKernel fails t unless the host holds exactly m: nsnet's links (a
// bridge and a veth per running container), the containers' interfaces,
// the published ports; and unless the running containers pass traffic.
func checkKernel(t *testing.T, what string, s *stack.Stack, host *netns.NS, ctrs map[string]*netns.NS, m crashModel) {
	t.Helper()
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
	want := len(m.ctrs)
	if m.net {
		want++
	}
	if ours != want {
		t.Errorf("%s: %d links of nsnet in the host, want %d: %v", what, ours, want, nstest.LinkNames(t, host))
	}
	for _, id := range crashCtrIDs {
		names := nstest.LinkNames(t, ctrs[id])
		if running := slices.Contains(m.ctrs, id); running != (len(names) == 2) {
			t.Errorf("%s: container %s (running: %v) has %v", what, id, running, names)
		}
	}
	ms, err := portmap.List(t.Context(), host)
	if err != nil {
		t.Fatal(err)
	}
	if a := slices.Contains(m.ctrs, "a"); a != (len(ms) == 1) || len(ms) > 1 {
		t.Errorf("%s: mappings %v", what, ms)
	}
	cs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		to := c.Nameservers[0] // the gateway
		if len(cs) == 2 {
			other := cs[0]
			if other.ID == c.ID {
				other = cs[1]
			}
			to = other.Endpoints[0].Addrs[0].Addr()
		}
		if err := nstest.Ping(t.Context(), ctrs[c.ID], to); err != nil {
			t.Errorf("%s: %s pings %s: %v", what, c.ID, to, err)
		}
	}
}
