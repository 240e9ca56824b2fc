package etcdtest_test

import (
	"context"
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
