package ipam

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// The tests here run the file store across processes (the test binary
// started again, see TestMain) and the etcd store against a real server.

const childEnv = "NSNET_IPAM_CHILD" // "alloc DIR POOL PREFIX WORKERS EACH"

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(child(strings.Fields(args)))
	}
	if args := os.Getenv(crashEnv); args != "" {
		os.Exit(crashChild(strings.Fields(args)))
	}
	os.Exit(m.Run())
}

// child allocates from a file-backed pool: WORKERS goroutines, EACH
// allocations each, for owners PREFIX-w-i. It prints "owner addr" for every
// allocation the store acknowledged, as soon as it is acknowledged.
func child(args []string) int {
	if len(args) != 6 || args[0] != "alloc" {
		fmt.Fprintf(os.Stderr, "child: bad arguments %q\n", args)
		return 2
	}
	dir, pool, prefix := args[1], args[2], args[3]
	workers, _ := strconv.Atoi(args[4])
	each, _ := strconv.Atoi(args[5])
	s, err := OpenFileStore(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer s.Close()
	a, err := New(s, Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	code := 0
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				owner := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				al, err := a.Allocate(context.Background(), pool, owner)
				mu.Lock()
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					code = 1
					mu.Unlock()
					return
				}
				// One write per line: what the parent reads was acknowledged.
				fmt.Fprintf(os.Stdout, "%s %s\n", owner, al.IPv4.Addr.Addr())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return code
}

// startChild starts the test binary as an allocating child.
func startChild(t *testing.T, dir, pool, prefix string, workers, each int) (*exec.Cmd, io.ReadCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=alloc %s %s %s %d %d", childEnv, dir, pool, prefix, workers, each))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

// acknowledged reads a child's "owner addr" lines into got, failing the
// test on an address handed out twice.
func acknowledged(t *testing.T, r io.Reader, mu *sync.Mutex, got map[string]string, byAddr map[string]string) int {
	n := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			t.Errorf("child printed %q", sc.Text())
			continue
		}
		mu.Lock()
		if prev, ok := byAddr[f[1]]; ok {
			t.Errorf("%s handed out twice: to %s and %s", f[1], prev, f[0])
		}
		byAddr[f[1]], got[f[0]] = f[0], f[1]
		mu.Unlock()
		n++
	}
	return n
}

func openFile(t testing.TB, dir string) *FileStore {
	t.Helper()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatalf("OpenFileStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestFileStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store { return openFile(t, t.TempDir()) })
}

// TestFileStore_reopen: what one store wrote, another store on the same
// directory (a restarted process) reads, and revisions go on from there.
func TestFileStore_reopen(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openFile(t, dir)
	a, _ := New(s, Config{})
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.70.0.0/24")}}})
	want := mustAlloc(t, a, "n", "c1", addr("10.70.0.9"))
	s.Close()
	if _, err := s.Get(ctx, "x"); err == nil {
		t.Errorf("Get on a closed store: no error")
	}

	s2 := openFile(t, dir)
	b, _ := New(s2, Config{})
	got := mustAlloc(t, b, "n", "c1")
	if got.IPv4.Addr != want.IPv4.Addr || !got.IPv4.Static {
		t.Errorf("after reopen: %v, want %v (static)", got.IPv4, want.IPv4)
	}
	if al := mustAlloc(t, b, "n", "c2"); al.IPv4.Addr == want.IPv4.Addr {
		t.Errorf("reserved %s handed to c2", al.IPv4.Addr)
	}
}

// TestFileStore_corrupt: a truncated, altered or foreign state file is a
// *CorruptError naming the file, from OpenFileStore and from a store that
// was open when the file went bad; the file is left as it is.
func TestFileStore_corrupt(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openFile(t, dir)
	a, _ := New(s, Config{})
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.71.0.0/24")}}})
	mustAlloc(t, a, "n", "c1")
	if _, err := s.CAS(ctx, Op{Key: "big", Value: make([]byte, int(compactAt))}); err != nil {
		t.Fatal(err) // the snapshot that this test damages
	}
	path := filepath.Join(dir, stateFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	flip := append([]byte(nil), good...)
	flip[len(flip)/2] ^= 0x40
	cases := map[string][]byte{
		"empty":       {},
		"header only": good[:fileHeader],
		"truncated":   good[:len(good)-3],
		"one bit":     flip,
		"foreign":     []byte("{\"pools\": {}}\n"),
		"appended":    append(append([]byte(nil), good...), 0),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			var ce *CorruptError
			_, err := OpenFileStore(dir)
			if !errors.As(err, &ce) || ce.File != path {
				t.Fatalf("OpenFileStore: err = %v, want *CorruptError naming %s", err, path)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("message %q does not name the file", err)
			}
			// The store that was open sees it too, on every call.
			if _, err := s.Get(ctx, "ipam/pools"); !errors.As(err, &ce) {
				t.Errorf("Get: err = %v, want *CorruptError", err)
			}
			if _, err := a.Allocate(ctx, "n", "c2"); !errors.As(err, &ce) {
				t.Errorf("Allocate: err = %v, want *CorruptError", err)
			}
			if _, err := s.CAS(ctx, Op{Key: "k", Value: []byte("v")}); !errors.As(err, &ce) {
				t.Errorf("CAS: err = %v, want *CorruptError", err)
			}
			// Never a silent reset: the bad file is still there, as it was.
			if now, _ := os.ReadFile(path); string(now) != string(bad) {
				t.Errorf("the corrupt file was changed")
			}
		})
	}

	// Put back, everything works again, and c1 still has its address.
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := New(openFile(t, dir), Config{})
	if got := mustAlloc(t, b, "n", "c1"); got.IPv4.Addr != pfx("10.71.0.2/24") {
		t.Errorf("c1 = %s after repair", got.IPv4.Addr)
	}
}

// TestFileStore_twoProcesses: 8 goroutines in each of 2 processes allocate
// 2,000 addresses from one pool: none twice, none lost.
func TestFileStore_twoProcesses(t *testing.T) {
	const procs, workers, each = 2, 8, 125
	dir := t.TempDir()
	s := openFile(t, dir)
	a, _ := New(s, Config{})
	mustPool(t, a, PoolConfig{Name: "shared", Subnets: []SubnetConfig{{Subnet: pfx("10.72.0.0/20")}}})

	var mu sync.Mutex
	got, byAddr := map[string]string{}, map[string]string{}
	var wg sync.WaitGroup
	for p := range procs {
		cmd, out := startChild(t, dir, "shared", fmt.Sprintf("p%d", p), workers, each)
		wg.Go(func() {
			acknowledged(t, out, &mu, got, byAddr)
			if err := cmd.Wait(); err != nil {
				t.Errorf("child %d: %v", p, err)
			}
		})
	}
	// Meanwhile this process reads, without the lock, what the children
	// write, log compactions included: never an error, never going back.
	done := make(chan struct{})
	reads := make(chan int)
	go func() {
		n, last, held := 0, int64(0), 0
		defer func() { reads <- n }()
		for {
			select {
			case <-done:
				return
			default:
			}
			_, rev, err := s.List(t.Context(), "")
			_, als, ierr := a.Inspect(t.Context(), "shared")
			if err = errors.Join(err, ierr); err != nil {
				t.Errorf("reading while the children write: %v", err)
				return
			}
			if rev < last || len(als) < held {
				t.Errorf("read revision %d with %d allocations after %d with %d", rev, len(als), last, held)
			}
			last, held = rev, len(als)
			n++
		}
	}()
	wg.Wait()
	close(done)
	t.Logf("%d reads while the children wrote", <-reads)
	checkPool(t, a, "shared", got, procs*workers*each)
}

// checkPool checks that the pool holds exactly the acknowledged
// allocations got (owner to address), of which there are want.
func checkPool(t *testing.T, a *Allocator, pool string, got map[string]string, want int) {
	t.Helper()
	if len(got) != want {
		t.Errorf("%d allocations acknowledged, want %d", len(got), want)
	}
	_, als, err := a.Inspect(t.Context(), pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(als) != len(got) {
		t.Errorf("the pool holds %d allocations, %d were acknowledged", len(als), len(got))
	}
	for _, al := range als {
		if w, ok := got[al.Owner]; !ok || w != al.IPv4.Addr.Addr().String() {
			t.Errorf("pool has %s for %s, acknowledged: %q", al.IPv4.Addr, al.Owner, w)
		}
	}
}

// TestFileStore_crash: a process killed with SIGKILL while allocating
// leaves a state that loads, with every allocation it acknowledged.
func TestFileStore_crash(t *testing.T) {
	dir := t.TempDir()
	s := openFile(t, dir)
	a, _ := New(s, Config{})
	mustPool(t, a, PoolConfig{Name: "crash", Subnets: []SubnetConfig{{Subnet: pfx("10.73.0.0/16")}}})

	for round := range 3 {
		cmd, out := startChild(t, dir, "crash", fmt.Sprintf("r%d", round), 8, 100000)
		got, byAddr := map[string]string{}, map[string]string{}
		var mu sync.Mutex
		sc := bufio.NewReader(out)
		// Kill it at a different point each round, mid-allocation.
		for range 50 + 150*round {
			line, err := sc.ReadString('\n')
			if err != nil {
				t.Fatalf("child ended early: %v", err)
			}
			f := strings.Fields(line)
			got[f[0]], byAddr[f[1]] = f[1], f[0]
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// What it printed before it died was acknowledged too.
		acknowledged(t, sc, &mu, got, byAddr)
		cmd.Wait()

		// A fresh store and allocator: the state loads and holds every
		// acknowledged allocation (and perhaps some not acknowledged yet).
		b, _ := New(openFile(t, dir), Config{})
		_, als, err := b.Inspect(t.Context(), "crash")
		if err != nil {
			t.Fatalf("round %d: the state after SIGKILL: %v", round, err)
		}
		held := map[string]string{}
		for _, al := range als {
			held[al.Owner] = al.IPv4.Addr.Addr().String()
		}
		for owner, ad := range got {
			if held[owner] != ad {
				t.Errorf("round %d: acknowledged %s for %s, the state has %q", round, ad, owner, held[owner])
			}
		}
		t.Logf("round %d: killed after %d acknowledged; the state holds %d", round, len(got), len(held))
		// Next round: start from no allocations.
		if _, err := b.GC(t.Context(), "crash", func(string) bool { return false }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile+tmpSuffix)); err == nil {
		t.Logf("a temporary file was left behind by the kill (harmless: replaced by the next write)")
	}
}
