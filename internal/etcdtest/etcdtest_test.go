package etcdtest

import (
	"syscall"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func clientv3WithRev(rev int64) []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithRev(rev)}
}

func TestStartRestartCompact(t *testing.T) {
	s := Start(t)
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
	wr := <-c.Watch(ctx, "k", clientv3WithRev(1)...)
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
