package ipam

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashEnv makes the test binary a crash child (see TestMain):
// "DIR SEED STEP K", STEP "-" for none.
const crashEnv = "NSNET_IPAM_CRASH"

// crashSubnet is the subnet of pool p0 or p1 of the crash harness.
func crashSubnet(pool string) netip.Prefix {
	return netip.MustParsePrefix("10.80." + strings.TrimPrefix(pool, "p") + ".0/24")
}

// crashChild calls CreatePool, DeletePool, Allocate and Release at random
// (seeded) on the file store in DIR (args: DIR SEED STEP K), see
// crashOps. When a write reaches step STEP for the K-th time, it prints
// "at STEP" and waits there to be killed. Args starting with "etcd" go to
// EtcdCrashChild (the etcd store, in package ipam_test).
func crashChild(args []string) int {
	if args[0] == "etcd" {
		return EtcdCrashChild(args[1:])
	}
	dir, step := args[0], args[2]
	seed, _ := strconv.ParseUint(args[1], 10, 64)
	k, _ := strconv.Atoi(args[3])
	compactAt = 4096 // a compaction every few dozen writes
	s, err := OpenFileStore(dir)
	if err != nil {
		fmt.Println("fail", err)
		return 1
	}
	a, _ := New(s, Config{})
	hits := 0
	stepHook = func(name string) {
		if name == step {
			if hits++; hits == k {
				fmt.Println("at", name)
				select {}
			}
		}
	}
	crashOps(a, seed)
	return 0
}

// crashOps prints "ready", then calls CreatePool, DeletePool, Allocate
// and Release at random (seeded), printing "call OP POOL OWNER" before
// each call and "ok OP POOL OWNER ADDR" or "err OP POOL OWNER ..." after
// it, and "done" after the last.
func crashOps(a *Allocator, seed uint64) {
	fmt.Println("ready")
	r := rand.New(rand.NewPCG(seed, 15))
	ctx := context.Background()
	for range 1000 {
		pool, owner := fmt.Sprint("p", r.IntN(2)), fmt.Sprint("o", r.IntN(8))
		var op, res string
		var err error
		switch x := r.IntN(100); {
		case x < 45:
			op = "alloc"
			var static []netip.Addr
			if r.IntN(5) == 0 {
				static = []netip.Addr{crashSubnet(pool).Addr().Next().Next().Next().Next()}
			}
			fmt.Println("call", op, pool, owner)
			var al Allocation
			if al, err = a.Allocate(ctx, pool, owner, static...); err == nil {
				res = al.IPv4.Addr.Addr().String()
			}
		case x < 75:
			op = "release"
			fmt.Println("call", op, pool, owner)
			err = a.Release(ctx, pool, owner)
		case x < 88:
			op, owner = "create", "-"
			fmt.Println("call", op, pool, owner)
			_, err = a.CreatePool(ctx, PoolConfig{Name: pool, Subnets: []SubnetConfig{{Subnet: crashSubnet(pool)}}})
		default:
			op, owner = "delete", "-"
			fmt.Println("call", op, pool, owner)
			err = a.DeletePool(ctx, pool)
		}
		if err != nil {
			fmt.Println("err", op, pool, owner, strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Println("ok", op, pool, owner, res)
		}
	}
	fmt.Println("done")
}

// crashModel is what the acknowledged calls made: pool to owner to
// address ("" for a pool with no allocation yet).
type crashModel map[string]map[string]string

func (m crashModel) clone() crashModel {
	c := crashModel{}
	for p, o := range m {
		c[p] = maps.Clone(o)
	}
	return c
}

// apply applies an acknowledged call (f: OP POOL OWNER [ADDR]).
func (m crashModel) apply(f []string) {
	op, pool, owner := f[0], f[1], f[2]
	switch op {
	case "create":
		if m[pool] == nil {
			m[pool] = map[string]string{}
		}
	case "delete":
		delete(m, pool)
	case "alloc":
		if m[pool] == nil {
			m[pool] = map[string]string{} // not created: the check fails
		}
		m[pool][owner] = f[3]
	case "release":
		delete(m[pool], owner)
	}
}

func (m crashModel) String() string {
	var lines []string
	for p, owners := range m {
		lines = append(lines, "pool "+p+" "+crashSubnet(p).String())
		for o, a := range owners {
			lines = append(lines, p+" "+o+" "+a)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// readModel reads the store's state as a crashModel.
func readModel(t *testing.T, a *Allocator) crashModel {
	t.Helper()
	pools, err := a.Pools(t.Context())
	if err != nil {
		t.Fatalf("Pools after the crash: %v", err)
	}
	m := crashModel{}
	for _, p := range pools {
		if len(p.Subnets) != 1 || p.Subnets[0].Subnet != crashSubnet(p.Name) {
			t.Errorf("pool %s has subnets %+v", p.Name, p.Subnets)
		}
		_, allocs, err := a.Inspect(t.Context(), p.Name)
		if err != nil {
			t.Fatalf("Inspect %s after the crash: %v", p.Name, err)
		}
		m[p.Name] = map[string]string{}
		for _, al := range allocs {
			m[p.Name][al.Owner] = al.IPv4.Addr.Addr().String()
		}
	}
	return m
}

// TestFileStore_crashPoints kills a child process (SIGKILL) at every step
// of the file store's writes (the lock taken, a log entry written and
// synced, a snapshot's or a new log's temporary file written, synced,
// renamed, the directory synced), at several occurrences each, and at
// random moments, while it creates and deletes pools and allocates and
// releases addresses. After each kill, the recovery (the store opened
// again, GC of each pool with the owners whose allocation was
// acknowledged) leaves exactly the acknowledged state, with the call that
// was cut short either done or not done.
func TestFileStore_crashPoints(t *testing.T) {
	smallLog(t) // the children's too: a compaction every few dozen writes
	// In memory where there is /dev/shm: a kill is no power loss, and
	// the children's writes then cost no disk flushes.
	dir, err := os.MkdirTemp("/dev/shm", "nsnet-ipam-crash")
	if err != nil {
		dir = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	steps := []string{"locked", "log-written", "log-synced", "tmp-written", "tmp-synced", "renamed", "dir-synced"}
	var kills []crashKill
	for range 3 {
		for _, s := range steps {
			ks := []int{1, 3, 7, 15}
			if strings.HasPrefix(s, "tmp") || s == "renamed" || s == "dir-synced" {
				ks = []int{1, 2, 3} // twice per compaction: the snapshot, the log
			}
			for _, k := range ks {
				kills = append(kills, crashKill{s, k})
			}
		}
	}
	for range 30 {
		kills = append(kills, crashKill{"-", 0}) // at a random moment
	}
	crashHarness(t, kills, func(i int, kl crashKill) string {
		return fmt.Sprintf("%s %d %s %d", dir, i, kl.Step, kl.K)
	}, func(t *testing.T) (*Allocator, func()) {
		s, err := OpenFileStore(dir)
		if err != nil {
			t.Fatalf("OpenFileStore: %v", err)
		}
		a, _ := New(s, Config{})
		return a, func() { s.Close() }
	})
}

// A crashKill says where the harness kills a child: at the K-th time a
// write reaches Step, or at a random moment (Step "-").
type crashKill struct {
	Step string
	K    int
}

// crashHarness starts children (the test binary with crashEnv set to
// env's value) that run crashOps, kills them as kills say (and at random
// moments after those, until there were at least 100 kills), and after
// each, opens the store again (open, whose second result closes it),
// collects with GC the owners that no acknowledged call left holding, and
// checks that the store holds exactly the acknowledged state, the call
// that was cut short done or not done.
func crashHarness(t *testing.T, kills []crashKill, env func(i int, kl crashKill) string, open func(t *testing.T) (*Allocator, func())) {
	model := crashModel{}
	killed, cut, acked := 0, 0, 0
	start := time.Now()
	for i := 0; i < len(kills) || killed < 100; i++ {
		kl := crashKill{"-", 0} // at a random moment, until there were 100 kills
		if i < len(kills) {
			kl = kills[i]
		}
		if i >= 300 {
			t.Fatalf("%d kills in %d children", killed, i)
		}
		what := fmt.Sprintf("kill %d at %s #%d", i, kl.Step, kl.K)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+env(i, kl))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		var timer <-chan time.Time
		var inflight []string
		before := model.clone()
		handle := func(line string) {
			f := strings.Fields(line)
			switch f[0] {
			case "call":
				inflight = f[1:]
				before = model.clone()
			case "ok":
				model.apply(f[1:])
				inflight = nil
				acked++
			case "err":
				inflight = nil
			}
		}
		sawKill := false
		for stop := false; !stop; {
			select {
			case line, ok := <-lines:
				switch {
				case !ok || line == "done":
					stop = true
				case line == "ready":
					if kl.Step == "-" {
						timer = time.After(time.Duration(rand.IntN(15000)) * time.Microsecond)
					}
				case strings.HasPrefix(line, "at "):
					sawKill, stop = true, true
				case strings.HasPrefix(line, "call ") || strings.HasPrefix(line, "ok ") || strings.HasPrefix(line, "err "):
					handle(line)
				default:
					t.Fatalf("%s: the child said %q", what, line)
				}
			case <-timer:
				sawKill, stop = true, true
			}
		}
		if sawKill {
			cmd.Process.Signal(syscall.SIGKILL)
			killed++
		} else {
			t.Logf("%s: no kill", what)
		}
		// What it printed before it died was acknowledged too.
		for line := range lines {
			handle(line)
		}
		cmd.Wait()
		cancel()

		// The recovery: the store opened again, GC with the owners the
		// model holds.
		a, closeStore := open(t)
		pools, err := a.Pools(t.Context())
		if err != nil {
			t.Fatalf("%s: Pools: %v", what, err)
		}
		for _, p := range pools {
			if _, err := a.GC(t.Context(), p.Name, func(owner string) bool { _, ok := model[p.Name][owner]; return ok }); err != nil {
				t.Fatalf("%s: GC: %v", what, err)
			}
		}
		got := readModel(t, a)
		closeStore()
		// The call cut short is done or not; an allocation that was not
		// acknowledged went with the GC.
		after := before.clone()
		if inflight != nil && inflight[0] != "alloc" {
			after.apply(inflight)
		}
		if inflight == nil {
			before = model
			after = model
		} else {
			cut++
		}
		switch got.String() {
		case before.String():
			model = before
		case after.String():
			model = after
		default:
			t.Fatalf("%s (cut short: %v): after the recovery the store holds\n%s\nwant\n%s\nor\n%s", what, inflight, got, before, after)
		}
	}
	t.Logf("%d kills (%d in a call) in %v, %d calls acknowledged; the last state: %d pools", killed, cut, time.Since(start).Round(time.Millisecond), acked, len(model))
}
