package downstream_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"example.com/downstream"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
)

// Process-wide checks: no descriptor, goroutine or foreign-namespace
// thread left once the tests ran.
func TestMain(m *testing.M) { nstest.Main(m) }

// TestAddDel: two containers on one host reach each other and, through
// NAT, an outside server, which sees the host's uplink address. Del and
// Teardown leave the host as it was (nstest.Host checks at cleanup).
func TestAddDel(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := downstream.Plugin{Host: host, Alloc: alloc, Network: "podnet", Subnet: netip.MustParsePrefix("10.88.0.0/24")}
	t.Cleanup(func() {
		if err := p.Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})

	c1, c2 := nstest.Container(t, host), nstest.Container(t, host)
	a1, err := p.Add(ctx, "c1", c1)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := p.Add(ctx, "c2", c2)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := p.Add(ctx, "c1", c1); err != nil || again != a1 {
		t.Errorf("Add c1 again = %v, %v; want %v", again, err, a1)
	}
	if err := nstest.Ping(ctx, c1, a2.Addr()); err != nil {
		t.Errorf("c1 to c2: %v", err)
	}

	srv := nstest.Serve(t, out.NS, "tcp", netip.AddrPortFrom(out.Addr, 80).String())
	r, err := nstest.Exchange(ctx, c2, "tcp", srv.Addr.String(), "GET /")
	if err != nil {
		t.Fatalf("c2 to the outside: %v", err)
	}
	if r.Peer.Addr() != out.HostAddr.Addr() {
		t.Errorf("the outside saw %s, want the host's uplink %s (NAT)", r.Peer.Addr(), out.HostAddr.Addr())
	}

	if err := p.Del(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if err := p.Del(ctx, "c2"); err != nil {
		t.Errorf("Del of a gone container: %v", err)
	}
	if err := nstest.Ping(ctx, c1, a2.Addr()); err == nil {
		t.Error("c1 still reaches c2 after Del")
	}
}

// TestOverlay: three hosts on an underlay, each joined to the overlays
// through its own client of one real etcd server on the underlay (one
// import: etcdtest). A network created on host 1 reaches every host, and a
// container of each host reaches the others across hosts; the server's
// restart does not stop a later container from being reached.
func TestOverlay(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := etcdtest.Start(t)
	topo := nstest.Underlay(t, 3)
	srv.Attach(t, topo)

	var hosts []*overlay.Host
	for i, th := range topo.Hosts {
		store, err := etcdstore.New(srv.ClientFrom(t, th.NS), "nsnet/")
		if err != nil {
			t.Fatal(err)
		}
		alloc, err := ipam.New(store, ipam.Config{})
		if err != nil {
			t.Fatal(err)
		}
		h, err := overlay.Join(ctx, overlay.HostConfig{NS: th.NS, Name: fmt.Sprint("host", i+1),
			VTEP: th.Addr.Addr(), Store: store, Alloc: alloc})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := h.Close(context.Background()); err != nil {
				t.Errorf("Close host%d: %v", i+1, err)
			}
		})
		hosts = append(hosts, h)
	}
	if _, err := hosts[0].Create(ctx, overlay.Config{Name: "ov", VNI: 77,
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.77.0.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	// A container on each host.
	ctrs := make([]*netns.NS, 3)
	addrs := make([]netip.Addr, 3)
	for i := range hosts {
		n, err := hosts[i].Network(ctx, "ov")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint("c", i+1)
		ctrs[i] = nstest.Container(t, topo.Hosts[i].NS)
		ep, err := n.Attach(ctx, overlay.EndpointConfig{ID: id, NS: ctrs[i]})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Detach(context.Background(), id) })
		addrs[i] = ep.Addrs[0].Addr()
	}
	for i := range ctrs {
		for j := range ctrs {
			if i != j {
				eventually(t, fmt.Sprintf("c%d reaches c%d across hosts", i+1, j+1),
					func() error { return nstest.Ping(ctx, ctrs[i], addrs[j]) })
			}
		}
	}

	// The store restarts; a container attached afterwards is reached.
	srv.Restart(t)
	n, err := hosts[2].Network(ctx, "ov")
	if err != nil {
		t.Fatal(err)
	}
	late := nstest.Container(t, topo.Hosts[2].NS)
	ep, err := n.Attach(ctx, overlay.EndpointConfig{ID: "late", NS: late})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Detach(context.Background(), "late") })
	eventually(t, "after etcd's restart, c1 reaches a new container of host 3",
		func() error { return nstest.Ping(ctx, ctrs[0], ep.Addrs[0].Addr()) })
}

// eventually retries f for up to 5 s: the overlay's control plane is
// asynchronous.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %v", what, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
