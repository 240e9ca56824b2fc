package main

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

// TestConcurrentAdds: ten ADDs at once on a node with no daemon yet, as a
// runtime starting ten pods: the plugins race to start the daemon (one
// wins the lock, the others exit), every container gets an address of
// its own and reaches the others. Then the daemon is killed (SIGKILL):
// the next calls start a new one, which takes the attachments back (DEL
// of each, and ADD again).
func TestConcurrentAdds(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tconc", map[string]any{"subnets": []map[string]string{{"subnet": "10.85.0.0/24"}}})
	const N = 10
	ctrs := make([]*ctr, N)
	for i := range ctrs {
		ctrs[i] = n.container(fmt.Sprintf("conc%d", i), map[string]any{"portMappings": []map[string]any{
			{"hostPort": 9000 + i, "containerPort": 80}}})
	}
	addrs := make([]netip.Addr, N)
	errs := make([]error, N)
	var wg sync.WaitGroup
	for i, c := range ctrs {
		wg.Go(func() {
			r, err := n.cni.AddNetworkList(t.Context(), list, c.rt)
			if err == nil {
				res, _ := resultOf(r)
				addrs[i] = addrOf(t, res)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %d: %v\n%s", i, err, n.log())
		}
		if seen[addrs[i]] {
			t.Errorf("address %s given twice", addrs[i])
		}
		seen[addrs[i]] = true
	}
	if err := nstest.Ping(t.Context(), ctrs[0].ns, addrs[N-1]); err != nil {
		t.Errorf("conc0 -> conc%d: %v", N-1, err)
	}
	pid := n.daemonPID()
	if pid == 0 {
		t.Fatal("no daemon")
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !n.waitDaemonGone(testTimeout) {
		t.Fatal("the killed daemon is still there")
	}
	n.del(list, ctrs[0])
	if n.daemonPID() == pid {
		t.Error("no new daemon")
	}
	// Its port is free again; the others' are still published.
	c := n.container("again", map[string]any{"portMappings": []map[string]any{{"hostPort": 9000, "containerPort": 80}}})
	n.add(list, c)
	c2 := n.container("taken", map[string]any{"portMappings": []map[string]any{{"hostPort": 9001, "containerPort": 80}}})
	if _, err := n.cni.AddNetworkList(t.Context(), list, c2.rt); err == nil {
		t.Error("port 9001 published twice after a daemon restart")
	}
	// The new daemon took the published ports' reservations back: no
	// program of the host can bind one and lose its traffic to the DNAT.
	if ln, err := host.Listen("tcp", "0.0.0.0:9002"); err == nil {
		ln.Close()
		t.Error("a program of the host could bind published port 9002 after the daemon restarted")
	}
	for _, c := range ctrs[1:] {
		if err := n.cni.CheckNetworkList(t.Context(), list, c.rt); err != nil {
			t.Errorf("CHECK %s after the restart: %v", c.rt.ContainerID, err)
		}
	}
}
