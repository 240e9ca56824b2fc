package macvlan

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

// TestNewTwoProcesses: two processes creating the same network at once
// both get it, with the same subnet, and the network is whole: no raw
// "file exists", no ErrExists for identical settings, no loser deleting
// the winner's pool.
func TestNewTwoProcesses(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	var ins []*os.File
	var outs []*bufio.Scanner
	for range 2 {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"=1", "NSNET_OP=new-race",
			fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()), "NSNET_STORE="+dir)
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); cmd.Wait() })
		ins, outs = append(ins, in.(*os.File)), append(outs, bufio.NewScanner(out))
	}
	for round := range 50 {
		name := fmt.Sprintf("race%d", round)
		for _, in := range ins {
			fmt.Fprintln(in, name)
		}
		var got []string
		for i, out := range outs {
			if !out.Scan() {
				t.Fatalf("round %d: child %d ended: %v", round, i, out.Err())
			}
			got = append(got, out.Text())
		}
		if !strings.HasPrefix(got[0], "ok ") || got[0] != got[1] {
			t.Fatalf("round %d: the two processes got %q and %q, want the same network", round, got[0], got[1])
		}
		n, err := Open(t.Context(), host, alloc, name)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := n.Check(t.Context()); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := n.Delete(t.Context(), false); err != nil {
			t.Fatal(err)
		}
	}
}

// blocked reports whether a call waits for network's lock (/proc/locks
// lists the waiters of each lock file by its inode).
func blocked(t testing.TB, host *netns.NS, network string) bool {
	l, err := keylock.File(locks.Prefix(host)+"."+network+".probe", true)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock(true)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(filepath.Dir(l.Path()), locks.Prefix(host)+"."+network), &st); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "-> FLOCK") && strings.Contains(line, fmt.Sprintf(":%d ", st.Ino)) {
			return true
		}
	}
	return false
}

// hold installs a step hook on network that blocks at step until release
// is closed, and closes reached when the call gets there.
func hold(t testing.TB, network, at string) (reached, release chan struct{}) {
	reached, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	stepHooks.Store(network, func(s string) error {
		if s == at {
			once.Do(func() { close(reached); <-release })
		}
		return nil
	})
	t.Cleanup(func() { stepHooks.Delete(network) })
	return reached, release
}

// TestDeleteRacingAttach: a Delete(false) that comes while an Attach is
// half way waits for it and then finds the endpoint (ErrInUse), instead of
// deleting the network under it; an Attach that comes while a Delete is
// half way waits and then fails with ErrNotFound, leaving nothing in the
// container nor in the store.
func TestDeleteRacingAttach(t *testing.T) {
	nstest.Require(t) // not parallel: it watches /proc/locks
	host := nstest.Underlay(t, 1).Hosts[0].NS
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "delatt", Parent: "eth0", Subnets: s10()})
	ctr := nstest.Container(t, host)

	for _, at := range []string{"begin", "allocate", "claim", "link"} {
		reached, release := hold(t, "delatt", at)
		attached := make(chan error, 1)
		go func() {
			_, err := n.Attach(context.Background(), EndpointConfig{ID: "c1", NS: ctr})
			attached <- err
		}()
		<-reached
		deleted := make(chan error, 1)
		go func() { deleted <- n.Delete(context.Background(), false) }()
		// Let the attach go on once the delete waits for it (or returned:
		// then it did not wait, and the test fails below).
		for !blocked(t, host, "delatt") && len(deleted) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		close(release)
		if err := <-attached; err != nil {
			t.Fatalf("Attach held at %s: %v", at, err)
		}
		if err := <-deleted; !errors.Is(err, ErrInUse) {
			t.Fatalf("Delete(false) racing Attach held at %s: %v, want ErrInUse", at, err)
		}
		stepHooks.Delete("delatt")
		if err := n.CheckEndpoint(t.Context(), "c1", ctr); err != nil {
			t.Fatal(err)
		}
		if err := n.Detach(t.Context(), "c1", ctr); err != nil {
			t.Fatal(err)
		}
	}

	// Now the other way round.
	reached, release := hold(t, "delatt", "checked")
	deleted := make(chan error, 1)
	go func() { deleted <- n.Delete(context.Background(), true) }()
	<-reached
	ctr2 := nstest.Container(t, host)
	attached := make(chan error, 1)
	go func() {
		_, err := n.Attach(context.Background(), EndpointConfig{ID: "c2", NS: ctr2})
		attached <- err
	}()
	for !blocked(t, host, "delatt") && len(attached) == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	close(release)
	if err := <-deleted; err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := <-attached; !errors.Is(err, ErrNotFound) {
		t.Fatalf("Attach racing Delete: %v, want ErrNotFound", err)
	}
	if got := linkNames(t, ctr2); len(got) != 1 {
		t.Errorf("the container of the failed attach has %v, want lo only", got)
	}
	if pools, err := alloc.Pools(t.Context()); err != nil || len(pools) != 0 {
		t.Errorf("after Delete the allocator has pools %+v (%v)", pools, err)
	}
	if infos, err := List(t.Context(), host, alloc); err != nil || len(infos) != 0 {
		t.Errorf("after Delete the host has networks %+v (%v)", infos, err)
	}
}

// TestChurn: goroutines attach and detach endpoints at random, each
// owning a few; at every quiet point between rounds, the kernel (the
// containers' interfaces and the anchor's records), Inspect, the IPAM and
// the model agree, and every attached endpoint checks clean.
func TestChurn(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "churn", Parent: "eth0", Subnets: s10()})
	const workers, each, rounds, ops = 4, 3, 6, 6
	ctrs := map[string]*netns.NS{}
	for w := range workers {
		for i := range each {
			ctrs[fmt.Sprintf("w%d-%d", w, i)] = nstest.Container(t, host)
		}
	}
	model := map[string]bool{}
	var mu sync.Mutex
	for round := range rounds {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for range ops {
					id := fmt.Sprintf("w%d-%d", w, r.IntN(each))
					var err error
					attached := r.IntN(2) == 0
					if attached {
						_, err = n.Attach(t.Context(), EndpointConfig{ID: id, NS: ctrs[id]})
					} else {
						err = n.Detach(t.Context(), id, nil)
					}
					if err != nil {
						t.Errorf("%s %v: %v", id, attached, err)
						return
					}
					mu.Lock()
					model[id] = attached
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		var want []string
		for id, on := range model {
			if on {
				want = append(want, id)
			}
		}
		slices.Sort(want)
		info, err := n.Inspect(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		addrs := map[string]string{}
		for _, e := range info.Endpoints {
			got = append(got, e.ID)
			if len(e.Addrs) != 1 || e.IfName != "eth0" {
				t.Errorf("round %d: %s has %s, addresses %v", round, e.ID, e.IfName, e.Addrs)
			} else {
				addrs[e.ID] = e.Addrs[0].Addr().String()
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: Inspect has %v, the model %v", round, got, want)
		}
		_, allocs, err := alloc.Inspect(t.Context(), n.pool)
		if err != nil {
			t.Fatal(err)
		}
		var owners []string
		for _, a := range allocs {
			owners = append(owners, a.Owner)
		}
		var wantOwners []string
		for _, id := range want {
			wantOwners = append(wantOwners, endpointOwner("churn", id))
		}
		if !slices.Equal(owners, wantOwners) {
			t.Fatalf("round %d: the IPAM has %v, the model %v", round, owners, wantOwners)
		}
		anchor, err := n.anchorLink()
		if err != nil {
			t.Fatal(err)
		}
		records := byID(claimsOf(anchor))
		if len(records) != len(want) {
			t.Fatalf("round %d: the anchor records %v, the model %v", round, records, want)
		}
		for _, id := range want {
			if r := records[id]; len(r) != 1 || r[0].String() != addrs[id] {
				t.Fatalf("round %d: the anchor records %v for %s, which holds %s", round, r, id, addrs[id])
			}
		}
		for id, c := range ctrs {
			names := linkNames(t, c)
			if model[id] != (len(names) == 2) {
				t.Fatalf("round %d: container %s has %v, attached: %v", round, id, names, model[id])
			}
			if model[id] {
				if err := n.CheckEndpoint(t.Context(), id, c); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
		}
	}
}
