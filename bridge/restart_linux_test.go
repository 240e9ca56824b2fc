package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

const childEnv = "NSNET_BRIDGE_RESTART_CHILD"

// TestRestart: a second process finds the network an earlier one built,
// with its endpoints, and detaches endpoints it did not create.
func TestRestart(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	dir := t.TempDir()
	alloc := fileAlloc(t, dir)
	n := newNet(t, host, alloc, Config{Name: "restart", Subnets: subnet("10.30.0.0/24", ""), Labels: map[string]string{"k": "v"}})
	c1, e1 := attach(t, n, "c1", EndpointConfig{DefaultRoute: true})
	c2, e2 := attach(t, n, "c2", EndpointConfig{})

	// The child opens the host through this process's descriptor.
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"=1",
		fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()),
		"NSNET_STORE="+dir,
	)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var seen Info
	if err := json.Unmarshal(out, &seen); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	if seen.Name != "restart" || seen.Labels["k"] != "v" || len(seen.Endpoints) != 2 {
		t.Fatalf("the child saw %+v", seen)
	}
	for i, want := range []Endpoint{e1, e2} {
		got := seen.Endpoints[i]
		if got.ID != want.ID || got.HostVeth != want.HostVeth || got.MAC.String() != want.MAC.String() || !slices.Equal(got.Addrs, want.Addrs) || got.IfName != "eth0" {
			t.Errorf("child saw endpoint %+v, this process made %+v", got, want)
		}
	}
	// The child detached both.
	for _, c := range []*netns.NS{c1, c2} {
		if got := nstest.LinkNames(t, c); len(got) != 1 {
			t.Errorf("container after the child's Detach: %v", got)
		}
	}
	info, err := n.Inspect(t.Context())
	if err != nil || len(info.Endpoints) != 0 {
		t.Fatalf("Inspect after the child's Detach: %+v, %v", info, err)
	}
	if got := held(t, n, "c1"); len(got) != 0 {
		t.Fatalf("c1's addresses were not released: %v", got)
	}
}

// restartChild is the second process of TestRestart.
func restartChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		fail(err)
	}
	defer host.Close()
	alloc, closeAlloc, err := openFileAlloc(os.Getenv("NSNET_STORE"))
	if err != nil {
		fail(err)
	}
	defer closeAlloc()
	ctx := context.Background()
	n, err := Open(ctx, host, alloc, "restart")
	if err != nil {
		fail(err)
	}
	info, err := n.Inspect(ctx)
	if err != nil {
		fail(err)
	}
	for _, e := range info.Endpoints {
		if err := n.Detach(ctx, e.ID); err != nil {
			fail(err)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(info); err != nil {
		fail(err)
	}
}
