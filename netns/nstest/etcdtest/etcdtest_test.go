//go:build linux

package etcdtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestStartRestartCompact(t *testing.T) {
	t.Parallel()
	s := etcdtest.Start(t)
	c := s.Client(t)
	ctx := t.Context()
	if _, err := c.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	pid := s.PID()
	s.Restart(t)
	if s.PID() == pid {
		t.Errorf("Restart kept PID %d", pid)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("old server %d still runs", pid)
	}
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get after restart = %v, want v1", resp.Kvs)
	}
	put, err := c.Put(ctx, "k", "v2")
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	rev := s.Compact(t)
	if rev < put.Header.Revision {
		t.Errorf("Compact = %d, want >= %d", rev, put.Header.Revision)
	}
	wr := <-c.Watch(ctx, "k", clientv3.WithRev(1))
	if wr.CompactRevision == 0 {
		t.Errorf("watch from revision 1 after compaction: CompactRevision 0, err %v", wr.Err())
	}
	last := s.PID()
	s.Stop()
	s.Stop() // twice: nothing
	if s.PID() != 0 || syscall.Kill(last, 0) == nil {
		t.Errorf("server %d still runs after Stop", last)
	}
}

// TestUnderlay: the hosts of an underlay reach the attached server across
// the underlay, and what one writes the test process reads; a host whose
// uplink is down does not reach it.
func TestUnderlay(t *testing.T) {
	t.Parallel()
	s := etcdtest.Start(t)
	topo := nstest.Underlay(t, 2)
	s.Attach(t, topo)
	if err := nstest.Ping(t.Context(), topo.Hosts[0].NS, etcdtest.UnderlayAddr); err != nil {
		t.Fatal(err)
	}
	h1 := s.ClientFrom(t, topo.Hosts[0].NS)
	if _, err := h1.Put(t.Context(), "from", "host1"); err != nil {
		t.Fatalf("put from host 1: %v", err)
	}
	resp, err := s.Client(t).Get(t.Context(), "from")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "host1" {
		t.Fatalf("get from the test process = %v, %v", resp, err)
	}

	// Host 2 without its uplink: no store.
	nl, err := topo.Hosts[1].NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(eth0); err != nil {
		t.Fatal(err)
	}
	h2 := s.ClientFrom(t, topo.Hosts[1].NS)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := h2.Get(ctx, "from"); err == nil {
		t.Fatal("a host without uplink reached the store")
	}
}

// TestOneBuild: three test processes that need the server at once, with
// an empty cache directory, build it once: the others wait on the lock
// and use that build.
func TestOneBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the etcd server (from the Go build cache: seconds)")
	}
	nstest.Require(t)
	if _, err := etcdtest.Binary(); err != nil {
		t.Skipf("no etcd server here: %v", err) // Start fails or skips for it
	}
	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOCACHE: %v", err)
	}
	cache := t.TempDir()
	var procs []*exec.Cmd
	var outs []*strings.Builder
	for range 3 {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBuildChild$")
		// The same Go build cache, a new cache directory for the server.
		cmd.Env = append(os.Environ(), "ETCDTEST_BUILD_CHILD=1", "XDG_CACHE_HOME="+cache,
			"GOCACHE="+strings.TrimSpace(string(gocache)))
		out := new(strings.Builder)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs, outs = append(procs, cmd), append(outs, out)
	}
	var bins []string
	for i, cmd := range procs {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
		_, after, _ := strings.Cut(outs[i].String(), "binary: ")
		bin, _, _ := strings.Cut(after, "\n")
		bins = append(bins, bin)
	}
	if bins[0] == "" || bins[0] != bins[1] || bins[1] != bins[2] || !strings.HasPrefix(bins[0], cache) {
		t.Fatalf("binaries %q, want one path under %s", bins, cache)
	}
	log, err := os.ReadFile(filepath.Join(filepath.Dir(bins[0]), "builds.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "\n"); n != 1 {
		t.Errorf("%d builds for three processes, want 1:\n%s", n, log)
	}
}

// TestBuildChild is TestOneBuild's child process: it prints the path of
// the server binary.
func TestBuildChild(t *testing.T) {
	if os.Getenv("ETCDTEST_BUILD_CHILD") != "1" {
		t.Skip("a child process of TestOneBuild")
	}
	bin, err := etcdtest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("binary: %s\n", bin)
}
