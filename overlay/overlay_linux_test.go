package overlay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	nstest.Main(m)
}

// cluster is n hosts on an underlay, joined to the overlays on one store.
type cluster struct {
	topo  *nstest.Topology
	store ipam.Store // the memory store, if the hosts share one
	hosts []*overlay.Host
}

func newCluster(t testing.TB, n int, store ipam.Store) *cluster {
	t.Helper()
	return joinCluster(t, nstest.Underlay(t, n), func() ipam.Store { return store }, 0)
}

// etcdStore is the store every host of a test cluster shares, under one prefix.
func etcdStore(t testing.TB, c *clientv3.Client) ipam.Store {
	t.Helper()
	s, err := etcdstore.New(c, "nsnet/")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// etcdCluster is n hosts on a real etcd server attached to their
// underlay, each with its own client that reaches it across the underlay.
func etcdCluster(t testing.TB, srv *etcdtest.Server, n int, ttl time.Duration) *cluster {
	t.Helper()
	topo := nstest.Underlay(t, n)
	srv.Attach(t, topo)
	next := 0
	return joinCluster(t, topo, func() ipam.Store {
		next++
		return etcdStore(t, srv.ClientFrom(t, topo.Hosts[next-1].NS))
	}, ttl)
}

// joinCluster joins the hosts of topo to the overlays, each host on the
// store that store returns, with leases of ttl (0: the default).
func joinCluster(t testing.TB, topo *nstest.Topology, store func() ipam.Store, ttl time.Duration) *cluster {
	return joinClusterWith(t, topo, store, ttl, nil)
}

// joinClusterWith is joinCluster with each host's config given to opt
// before it joins.
func joinClusterWith(t testing.TB, topo *nstest.Topology, store func() ipam.Store, ttl time.Duration, opt func(i int, cfg *overlay.HostConfig)) *cluster {
	t.Helper()
	c := &cluster{topo: topo}
	for i, th := range c.topo.Hosts {
		s := store()
		c.store = s
		alloc, err := ipam.New(s, ipam.Config{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := overlay.HostConfig{NS: th.NS, Name: fmt.Sprint("host", i+1),
			VTEP: th.Addr.Addr(), Store: s, Alloc: alloc, LeaseTTL: ttl}
		if opt != nil {
			opt(i, &cfg)
		}
		h, err := overlay.Join(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := h.Close(context.Background()); err != nil {
				t.Errorf("Close host%d: %v", i+1, err)
			}
		})
		c.hosts = append(c.hosts, h)
	}
	return c
}

// attach attaches a new container of host i to the network.
func (c *cluster) attach(t *testing.T, i int, network, id string) (*netns.NS, netip.Addr) {
	t.Helper()
	n, err := c.hosts[i].Network(t.Context(), network)
	if err != nil {
		t.Fatal(err)
	}
	ns := nstest.Container(t, c.topo.Hosts[i].NS)
	ep, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: id, NS: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Detach(context.Background(), id) })
	return ns, ep.Addrs[0].Addr()
}

// waitFor is how long eventually waits.
var waitFor = 5 * time.Second

// eventually retries f for up to waitFor: the control plane is
// asynchronous.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
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

func subnets(p string) []ipam.SubnetConfig {
	return []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(p), Gateway: netip.MustParsePrefix(p).Addr().Next()}}
}

// TestThreeHosts is S11: a network created on host1 exists on all three;
// containers on each get distinct addresses and reach each other over ICMP
// and TCP across hosts, with the MTU derived from the underlay's.
func TestThreeHosts(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, ipam.NewMemoryStore())
	cfg := overlay.Config{Name: "ov", VNI: 4096, Subnets: []ipam.SubnetConfig{{
		Subnet: netip.MustParsePrefix("172.30.0.0/16"), Gateway: netip.MustParseAddr("172.30.0.254")}}}
	if _, err := c.hosts[0].Create(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	// The others see it without being told.
	for i, th := range c.topo.Hosts[1:] {
		eventually(t, fmt.Sprint("host", i+2, " has the network's devices"), func() error {
			names := nstest.LinkNames(t, th.NS)
			for _, n := range names {
				if n == "ovvx1000" {
					return nil
				}
			}
			return fmt.Errorf("links %v", names)
		})
	}
	var ctrs []*netns.NS
	var addrs []netip.Addr
	seen := map[netip.Addr]bool{}
	for i := range 3 {
		ns, a := c.attach(t, i, "ov", fmt.Sprint("c", i+1))
		if seen[a] {
			t.Fatalf("address %s handed out twice", a)
		}
		seen[a] = true
		ctrs, addrs = append(ctrs, ns), append(addrs, a)
	}
	// Attaching again returns the same endpoint.
	n1, err := c.hosts[0].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	if ep, err := n1.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctrs[0]}); err != nil || ep.Addrs[0].Addr() != addrs[0] {
		t.Errorf("attaching c1 again: %+v, %v", ep, err)
	}
	if addrs[0] != netip.MustParseAddr("172.30.0.1") {
		t.Errorf("first address %s, want 172.30.0.1", addrs[0])
	}
	for i := range 3 {
		for j := range 3 {
			if i == j {
				continue
			}
			eventually(t, fmt.Sprintf("c%d pings c%d", i+1, j+1), func() error {
				return nstest.Ping(t.Context(), ctrs[i], addrs[j])
			})
		}
	}
	nstest.Serve(t, ctrs[2], "tcp", "0.0.0.0:80")
	r, err := nstest.Exchange(t.Context(), ctrs[0], "tcp", netip.AddrPortFrom(addrs[2], 80).String(), "x")
	if err != nil || r.Peer.Addr() != addrs[0] {
		t.Errorf("TCP from c1 to c3 across hosts: %+v, %v", r, err)
	}
	l, err := ctrs[0].Netlink()
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := l.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if mtu := eth0.Attrs().MTU; mtu != 1500-50 {
		t.Errorf("container MTU %d, want the underlay's 1500 minus 50", mtu)
	}

	// Detach on host2: the others drop its entries.
	n2, _ := c.hosts[1].Network(t.Context(), "ov")
	if err := n2.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		eventually(t, fmt.Sprintf("host%d drops c2's neighbour entry", i+1), func() error {
			if neighOf(t, c.topo.Hosts[i].NS, "ovvx1000", addrs[1]) {
				return errors.New("still there")
			}
			return nil
		})
	}
}

func neighOf(t *testing.T, ns *netns.NS, dev string, addr netip.Addr) bool {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s: %v", dev, err)
	}
	ns4, err := h.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns4 {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr {
			return true
		}
	}
	return false
}

// TestSameSubnetOtherVNI: two overlays with one subnet and different VNIs
// (two tenants, each with its own control plane) do not see each other,
// although their containers have the same addresses.
func TestSameSubnetOtherVNI(t *testing.T) {
	t.Parallel()
	blue := newCluster(t, 2, ipam.NewMemoryStore())
	redStore := ipam.NewMemoryStore()
	red := joinCluster(t, blue.topo, func() ipam.Store { return redStore }, 0)
	// Internal: the two control planes would each want the hosts' gateway
	// bridge.
	if _, err := blue.hosts[0].Create(t.Context(), overlay.Config{Name: "blue", VNI: 100, Subnets: subnets("10.60.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := red.hosts[0].Create(t.Context(), overlay.Config{Name: "red", VNI: 200, Subnets: subnets("10.60.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	b1, _ := blue.attach(t, 0, "blue", "b1")
	b2, b2Addr := blue.attach(t, 1, "blue", "b2")
	r1, _ := red.attach(t, 0, "red", "r1")
	r2, r2Addr := red.attach(t, 1, "red", "r2")
	if b2Addr != r2Addr {
		t.Fatalf("the test wants the same address on both: %s, %s", b2Addr, r2Addr)
	}
	nstest.Serve(t, b2, "tcp", "0.0.0.0:80")
	nstest.Serve(t, r2, "tcp", "0.0.0.0:81")
	tcp := func(from *netns.NS, port uint16) error {
		_, err := nstest.Exchange(t.Context(), from, "tcp", netip.AddrPortFrom(b2Addr, port).String(), "x")
		return err
	}
	eventually(t, "blue reaches blue", func() error { return tcp(b1, 80) })
	eventually(t, "red reaches red", func() error { return tcp(r1, 81) })
	if tcp(b1, 81) == nil {
		t.Error("blue reaches red's server")
	}
	if tcp(r1, 80) == nil {
		t.Error("red reaches blue's server")
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, ipam.NewMemoryStore())
	var ve *overlay.ValidationError
	for _, cfg := range []overlay.Config{
		{Name: "a", VNI: 0, Subnets: subnets("10.62.0.0/24")},
		{Name: "a", VNI: overlay.MaxVNI + 1, Subnets: subnets("10.62.0.0/24")},
		{Name: "a", VNI: 5},
		{Name: "", VNI: 5, Subnets: subnets("10.62.0.0/24")},
	} {
		if _, err := c.hosts[0].Create(t.Context(), cfg); !errors.As(err, &ve) {
			t.Errorf("Create(%+v): %v, want a *ValidationError", cfg, err)
		}
	}
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "a", VNI: 5, Subnets: subnets("10.62.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "a", VNI: 5, Subnets: subnets("10.62.0.0/24")}); err != nil {
		t.Errorf("the same network again: %v", err)
	}
	for _, cfg := range []overlay.Config{
		{Name: "a", VNI: 6, Subnets: subnets("10.62.0.0/24")}, // other settings
		{Name: "b", VNI: 5, Subnets: subnets("10.63.0.0/24")}, // a VNI in use
	} {
		if _, err := c.hosts[0].Create(t.Context(), cfg); !errors.Is(err, overlay.ErrExists) {
			t.Errorf("Create(%+v): %v, want ErrExists", cfg, err)
		}
	}
	_, err := overlay.Join(t.Context(), overlay.HostConfig{NS: c.topo.Hosts[0].NS, Name: "x",
		VTEP: netip.MustParseAddr("192.0.2.1"), Store: c.store, Alloc: nil})
	if !errors.As(err, &ve) {
		t.Errorf("Join without an allocator: %v", err)
	}
	alloc, err := ipam.New(c.store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = overlay.Join(t.Context(), overlay.HostConfig{NS: c.topo.Hosts[0].NS, Name: "x",
		VTEP: netip.MustParseAddr("192.0.2.1"), Store: c.store, Alloc: alloc})
	if !errors.As(err, &ve) || ve.Field != "VTEP" {
		t.Errorf("Join with a VTEP address the host does not have: %v", err)
	}
}

// TestDeadHost: a host that dies without a goodbye disappears from the
// others' kernels and from the store after its lease; the others keep
// talking.
func TestDeadHost(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	c := joinCluster(t, nstest.Underlay(t, 3), func() ipam.Store { return store }, 300*time.Millisecond)
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 7, Subnets: subnets("10.64.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	c1, _ := c.attach(t, 0, "ov", "c1")
	_, a2 := c.attach(t, 1, "ov", "c2")
	_, a3 := c.attach(t, 2, "ov", "c3")
	eventually(t, "c1 reaches c3", func() error { return nstest.Ping(t.Context(), c1, a3) })

	c.hosts[2].Crash()
	for _, i := range []int{0, 1} {
		eventually(t, fmt.Sprintf("host%d drops the dead host3's endpoint", i+1), func() error {
			if neighOf(t, c.topo.Hosts[i].NS, "ovvx7", a3) {
				return errors.New("still there")
			}
			return nil
		})
	}
	eventually(t, "host3's records leave the store", func() error {
		kvs, _, err := store.List(t.Context(), "overlay/")
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if strings.Contains(kv.Key, "host3") {
				return fmt.Errorf("%s is left", kv.Key)
			}
		}
		return nil
	})
	// The living stay: their heartbeats go on.
	time.Sleep(600 * time.Millisecond)
	if err := nstest.Ping(t.Context(), c1, a2); err != nil {
		t.Errorf("c1 to c2 after host3 died: %v", err)
	}
}

// TestEtcd runs three hosts on a real etcd server, each with its own
// client, and restarts the server: the hosts' watches resume, and changes
// made after the restart reach every host.
func TestEtcd(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := etcdCluster(t, srv, 3, 5*time.Second)
	hosts, topo := c.hosts, c.topo
	if _, err := hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 9, Subnets: subnets("10.65.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	c1, _ := c.attach(t, 0, "ov", "c1")
	_, a2 := c.attach(t, 1, "ov", "c2")
	c3, a3 := c.attach(t, 2, "ov", "c3")
	eventually(t, "c1 reaches c3 on etcd", func() error { return nstest.Ping(t.Context(), c1, a3) })

	srv.Restart(t)
	_, a4 := c.attach(t, 0, "ov", "c4")
	eventually(t, "after etcd's restart, c3 reaches the new c4", func() error { return nstest.Ping(t.Context(), c3, a4) })
	n2, err := hosts[1].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "host1 drops c2 after etcd's restart", func() error {
		if neighOf(t, topo.Hosts[0].NS, "ovvx9", a2) {
			return errors.New("still there")
		}
		return nil
	})
}

// TestConcurrentAttach: three hosts attach 50 containers each at the same
// time, with addresses from one pool on etcd: no address twice.
func TestConcurrentAttach(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := etcdCluster(t, srv, 3, 0)
	hosts, topo := c.hosts, c.topo
	if _, err := hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 11, Subnets: subnets("10.66.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for i, h := range hosts {
		n, err := h.Network(t.Context(), "ov")
		if err != nil {
			t.Fatal(err)
		}
		for j := range 50 {
			id := fmt.Sprintf("h%dc%d", i+1, j)
			ns := nstest.Container(t, topo.Hosts[i].NS)
			wg.Go(func() {
				ep, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: id, NS: ns})
				if err != nil {
					t.Errorf("attach %s: %v", id, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				a := ep.Addrs[0].Addr()
				if other, taken := owner[a]; taken {
					t.Errorf("%s has %s, which %s has too", id, a, other)
				}
				owner[a] = id
			})
		}
	}
	wg.Wait()
	if len(owner) != 150 {
		t.Errorf("%d distinct addresses for 150 containers", len(owner))
	}
}

// TestEgress: an overlay's containers reach beyond their host through its
// gateway bridge, masqueraded behind the host's address; an internal
// overlay's do not.
func TestEgress(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, ipam.NewMemoryStore())
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 12, Subnets: subnets("10.67.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "int", VNI: 13, Subnets: subnets("10.68.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	ctr, _ := c.attach(t, 0, "ov", "c1")
	inner, _ := c.attach(t, 0, "int", "c2")
	// "The outside": a server on the other host's underlay address.
	outside := c.topo.Hosts[1]
	srv := nstest.Serve(t, outside.NS, "tcp", outside.Addr.Addr().String()+":80")
	r, err := nstest.Exchange(t.Context(), ctr, "tcp", srv.Addr.String(), "x")
	if err != nil || r.Peer.Addr() != c.topo.Hosts[0].Addr.Addr() {
		t.Errorf("egress: %+v, %v; want the server to see host1's address %s", r, err, c.topo.Hosts[0].Addr.Addr())
	}
	if _, err := nstest.Exchange(t.Context(), inner, "tcp", srv.Addr.String(), "x"); err == nil {
		t.Error("a container of an internal overlay reached beyond its host")
	}
}

// TestRestart: a host whose process died comes back (a new Join on the
// same namespace): it re-syncs from the store, removing the entries the
// old process left for endpoints that went meanwhile, and keeps working.
func TestRestart(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	c := newCluster(t, 2, store)
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x14, Subnets: subnets("10.69.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	c1, _ := c.attach(t, 0, "ov", "c1")
	_, a2 := c.attach(t, 1, "ov", "c2")
	eventually(t, "c1 reaches c2", func() error { return nstest.Ping(t.Context(), c1, a2) })

	c.hosts[0].Crash()
	n2, err := c.hosts[1].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	if !neighOf(t, c.topo.Hosts[0].NS, "ovvx14", a2) {
		t.Fatal("the crashed host's kernel lost c2's entry by itself: the test shows nothing")
	}
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := overlay.Join(t.Context(), overlay.HostConfig{NS: c.topo.Hosts[0].NS, Name: "host1",
		VTEP: c.topo.Hosts[0].Addr.Addr(), Store: store, Alloc: alloc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close(context.Background()) })
	eventually(t, "the restarted host drops the stale entry of c2", func() error {
		if neighOf(t, c.topo.Hosts[0].NS, "ovvx14", a2) {
			return errors.New("still there")
		}
		return nil
	})
	_, a3 := c.attach(t, 1, "ov", "c3")
	eventually(t, "c1 reaches c3 after the restart", func() error { return nstest.Ping(t.Context(), c1, a3) })
}

// TestDelete: a network deleted on one host leaves every host; one with
// endpoints is refused.
func TestDelete(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, ipam.NewMemoryStore())
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 15, Subnets: subnets("10.70.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	n1, err := c.hosts[0].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	ns := nstest.Container(t, c.topo.Hosts[0].NS)
	if _, err := n1.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ns}); err != nil {
		t.Fatal(err)
	}
	if err := c.hosts[1].Delete(t.Context(), "ov"); !errors.Is(err, overlay.ErrInUse) {
		t.Errorf("Delete with an endpoint: %v, want ErrInUse", err)
	}
	if err := n1.Detach(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}
	if err := c.hosts[1].Delete(t.Context(), "ov"); err != nil {
		t.Fatal(err)
	}
	for i, th := range c.topo.Hosts {
		eventually(t, fmt.Sprint("host", i+1, " removes the network's devices"), func() error {
			for _, n := range nstest.LinkNames(t, th.NS) {
				if strings.HasPrefix(n, "ov") {
					return fmt.Errorf("%s is left", n)
				}
			}
			return nil
		})
	}
	if err := c.hosts[0].Delete(t.Context(), "ov"); err != nil {
		t.Errorf("Delete of a network that is gone: %v", err)
	}
	var ve *overlay.ValidationError
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "big", VNI: 16, Subnets: subnets("10.71.0.0/24"), MTU: 1500}); !errors.As(err, &ve) {
		t.Errorf("an MTU over the underlay's minus 50: %v, want a *ValidationError", err)
	}
}

// logged records the messages of a slog.Logger.
type logged struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logged) Enabled(context.Context, slog.Level) bool { return true }
func (l *logged) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *logged) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logged) WithGroup(string) slog.Handler      { return l }
func (l *logged) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.msgs, func(m string) bool { return strings.HasPrefix(m, prefix) })
}

// TestCompacted: while a host's watch is cut off, a network is defined and
// etcd's history compacted past the host's revision; the watch resumes
// from where it stopped, as an etcd client that reconnects does, meets
// "revision compacted", and the host lists everything again instead of
// retrying the lost revision, and converges. The cut is the test's: the
// watch is held while the store changes, then released, so the watch
// meets the compaction every time.
func TestCompacted(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	topo := nstest.Underlay(t, 1)
	store := &resumingStore{Store: etcdStore(t, srv.Client(t)), cut: make(chan struct{}),
		held: make(chan int64), resume: make(chan struct{})}
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	log := &logged{}
	// The lease is far longer than the test, so that the host never gives
	// up its silent watch (which would list again too, but not meet the
	// compaction).
	h, err := overlay.Join(t.Context(), overlay.HostConfig{NS: topo.Hosts[0].NS, Name: "host1",
		VTEP: topo.Hosts[0].Addr.Addr(), Store: store, Alloc: alloc, Logger: slog.New(log), LeaseTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })

	select { // waits for the host's watch to be open
	case store.cut <- struct{}{}:
	case <-time.After(waitFor):
		t.Fatal("the host never watched")
	}
	last := <-store.held
	// Another client: define a network, then compact the history past it,
	// by two revisions, so that the compaction passes the one the host's
	// watch resumes from.
	other := etcdStore(t, srv.Client(t))
	cfg := overlay.Config{Name: "late", VNI: 0x21, Subnets: subnets("10.73.1.0/24"), Port: overlay.DefaultPort, Internal: true}
	val, _ := json.Marshal(cfg)
	if _, err := other.CAS(t.Context(), ipam.Op{Key: "overlay/net/late", Value: val}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.CAS(t.Context(), ipam.Op{Key: "overlay/vni/33", Value: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	if rev := srv.Compact(t); rev <= last+1 {
		t.Fatalf("compacted at %d, not past the watch's %d: the test shows nothing", rev, last+1)
	}
	close(store.resume)
	eventually(t, "the host creates the devices of the network defined while it was cut off", func() error {
		if slices.Contains(nstest.LinkNames(t, topo.Hosts[0].NS), "ovvx21") {
			return nil
		}
		return errors.New("no ovvx21")
	})
	if !log.has("overlay: watch compacted") {
		t.Errorf("the host's watch did not meet the compaction; log %q", log.msgs)
	}
}

// resumingStore is a store whose first watch the test holds, as a lost
// connection does: a send on cut stops it, and its last revision comes
// back on held; once resume is closed, it watches again from that
// revision, as an etcd client that reconnects does.
type resumingStore struct {
	ipam.Store
	cut    chan struct{}
	held   chan int64
	resume chan struct{}
	once   sync.Once
}

func (s *resumingStore) Watch(ctx context.Context, prefix string, after int64) <-chan ipam.Event {
	first := false
	s.once.Do(func() { first = true })
	if !first {
		return s.Store.Watch(ctx, prefix, after)
	}
	out := make(chan ipam.Event)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(ctx)
		in := s.Store.Watch(wctx, prefix, after)
		for held := false; ; {
			select {
			case <-s.cut:
				if held {
					continue
				}
				held = true
				cancel()
				for range in {
				}
				s.held <- after
				select {
				case <-s.resume:
				case <-ctx.Done():
					return
				}
				wctx, cancel = context.WithCancel(ctx)
				in = s.Store.Watch(wctx, prefix, after)
			case ev, ok := <-in:
				if !ok {
					cancel()
					return
				}
				if ev.Rev > after {
					after = ev.Rev
				}
				select {
				case out <- ev:
				case <-ctx.Done():
				}
			}
		}
	}()
	return out
}

// TestNames: each host's DNS server answers the names (and aliases) of the
// overlay's containers on every host, and drops a name when its endpoint
// goes.
func TestNames(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	topo := nstest.Underlay(t, 3)
	servers := make([]*dnsd.Server, 3)
	c := joinClusterWith(t, topo, func() ipam.Store { return store }, 0, func(i int, cfg *overlay.HostConfig) {
		srv, err := dnsd.New(dnsd.Config{NS: topo.Hosts[i].NS, Upstreams: []netip.AddrPort{}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		servers[i], cfg.DNS = srv, srv
	})
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x30, Subnets: subnets("10.74.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	c1, a1 := c.attach(t, 0, "ov", "c1")
	_, a3 := c.attach(t, 2, "ov", "c3")
	ln, err := servers[0].ListenContainer(t.Context(), c1, []netip.Addr{a1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return c1.Dial(ctx, nil, network, "127.0.0.11:53")
	}}
	eventually(t, "c1 on host1 resolves c3 on host3", func() error {
		got, err := resolver.LookupNetIP(t.Context(), "ip4", "c3")
		if err != nil || len(got) != 1 || got[0] != a3 {
			return fmt.Errorf("%v, %v; want %s", got, err, a3)
		}
		return nil
	})
	// An alias (--network-alias) is served on every host too.
	n2, err := c.hosts[1].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	ep2, err := n2.Attach(t.Context(), overlay.EndpointConfig{ID: "c2", NS: nstest.Container(t, c.topo.Hosts[1].NS), Aliases: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "c1 on host1 resolves c2's alias db on host2", func() error {
		got, err := resolver.LookupNetIP(t.Context(), "ip4", "db")
		if err != nil || len(got) != 1 || got[0] != ep2.Addrs[0].Addr() {
			return fmt.Errorf("%v, %v; want %s", got, err, ep2.Addrs[0].Addr())
		}
		return nil
	})
	if _, err := n2.Attach(t.Context(), overlay.EndpointConfig{ID: "c9", NS: nstest.Container(t, c.topo.Hosts[1].NS), Aliases: []string{"a.b"}}); err == nil {
		t.Error("an alias that is not a DNS label was taken")
	}
	if err := n2.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	n3, err := c.hosts[2].Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	if err := n3.Detach(t.Context(), "c3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c3's name goes with it", func() error {
		if got, err := resolver.LookupNetIP(t.Context(), "ip4", "c3"); err == nil {
			return fmt.Errorf("c3 still resolves to %v", got)
		}
		return nil
	})
}

// TestCloseRetry: a Close whose store part fails (a cancelled context;
// etcd stopped) returns the error and still removes the host's devices and
// endpoints; a second Close, with the store back, removes the host's
// records and returns nil.
func TestCloseRetry(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := etcdCluster(t, srv, 2, 0)
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x50, Subnets: subnets("10.77.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	c.attach(t, 0, "ov", "c1")
	c.attach(t, 1, "ov", "c2")
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.hosts[0].Close(cancelled); err == nil {
		t.Error("Close with a cancelled context: nil error")
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := c.hosts[1].Close(ctx); err == nil {
		t.Error("Close with etcd stopped: nil error")
	}
	for i, th := range c.topo.Hosts {
		if names := nstest.LinkNames(t, th.NS); !slices.Equal(names, []string{"lo", "eth0"}) && !slices.Equal(names, []string{"eth0", "lo"}) {
			t.Errorf("host%d after a failed Close: links %v", i+1, names)
		}
	}
	srv.Restart(t)
	store := etcdStore(t, srv.Client(t))
	for i, h := range c.hosts {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		if err := h.Close(ctx); err != nil {
			t.Errorf("host%d: a second Close with the store back: %v", i+1, err)
		}
		cancel()
	}
	for _, prefix := range []string{"overlay/ep/", "overlay/host/"} {
		kvs, _, err := store.List(t.Context(), prefix)
		if err != nil || len(kvs) > 0 {
			t.Errorf("after the second Close, %s holds %d records, %v", prefix, len(kvs), err)
		}
	}
}

// noEvents fails the test if the store saw a change under prefix since
// rev: it writes a key after the others and reads the events up to it.
func noEvents(t *testing.T, store ipam.Store, rev int64, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	events := store.Watch(ctx, "overlay/", rev)
	if _, err := store.CAS(ctx, ipam.Op{Key: "overlay/zz-sentinel", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Err != nil {
			t.Fatal(ev.Err)
		}
		if strings.HasPrefix(ev.Key, prefix) {
			t.Errorf("the store saw %s (deleted: %v)", ev.Key, ev.Delete)
		}
		if ev.Key == "overlay/zz-sentinel" {
			kv, _ := store.Get(ctx, ev.Key)
			store.CAS(ctx, ipam.Op{Key: ev.Key, Rev: kv.Rev, Delete: true})
			return
		}
	}
	t.Fatal("the watch ended before the sentinel")
}

// TestBadInputTouchesNothing: bad networks and endpoints are refused with
// typed errors before the store or the kernel sees them; an attach that
// fails half way leaves nothing, and does not undo an endpoint attached
// before; nil and zero handles return errors.
func TestBadInputTouchesNothing(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	c := newCluster(t, 1, store)
	h, hostNS := c.hosts[0], c.topo.Hosts[0].NS
	_, rev, err := store.List(t.Context(), "overlay/")
	if err != nil {
		t.Fatal(err)
	}
	var ve *overlay.ValidationError
	for _, sc := range [][]ipam.SubnetConfig{
		{{Subnet: netip.MustParsePrefix("10.80.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1")}},
		{{Subnet: netip.MustParsePrefix("10.80.0.1/24")}},
		{{Subnet: netip.MustParsePrefix("10.80.0.0/24")}, {Subnet: netip.MustParsePrefix("10.80.0.0/25")}},
	} {
		if _, err := h.Create(t.Context(), overlay.Config{Name: "bad", VNI: 0x70, Subnets: sc}); !errors.As(err, &ve) {
			t.Errorf("Create with subnets %v: %v, want a *ValidationError", sc, err)
		}
	}
	// Subnets another pool has: refused before the network is written.
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alloc.CreatePool(t.Context(), ipam.PoolConfig{Name: "someone", Subnets: subnets("10.81.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Create(t.Context(), overlay.Config{Name: "bad", VNI: 0x70, Subnets: subnets("10.81.1.0/24")}); !errors.Is(err, ipam.ErrOverlap) {
		t.Errorf("Create with another pool's subnet: %v, want ipam.ErrOverlap", err)
	}
	noEvents(t, store, rev, "overlay/net/")
	if slices.Contains(nstest.LinkNames(t, hostNS), "ovvx70") {
		t.Error("a refused network has devices")
	}

	n, err := h.Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x71, Subnets: subnets("10.82.0.0/24"), Internal: true})
	if err != nil {
		t.Fatal(err)
	}
	ctr := nstest.Container(t, hostNS)
	_, rev, _ = store.List(t.Context(), "overlay/")
	for _, ec := range []overlay.EndpointConfig{
		{ID: "c1", NS: hostNS},
		{ID: "c1", NS: ctr, IfName: "a-name-too-long-for-linux"},
		{ID: "c1", NS: ctr, MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}},
		{ID: "c1", NS: ctr, MAC: net.HardwareAddr{2, 0, 0, 0, 1}},
		{ID: "", NS: ctr},
		{ID: "c1"},
	} {
		if _, err := n.Attach(t.Context(), ec); !errors.As(err, &ve) {
			t.Errorf("Attach(%+v): %v, want a *ValidationError", ec, err)
		}
	}
	noEvents(t, store, rev, "overlay/ep/")

	// Half way: the container has an eth0 already.
	cn, err := ctr.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if err := cn.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctr}); err == nil {
		t.Fatal("Attach into a container that has an eth0: no error")
	}
	if kvs, _, _ := store.List(t.Context(), "overlay/ep/"); len(kvs) > 0 {
		t.Errorf("a failed attach left %s", kvs[0].Key)
	}
	if _, allocs, err := alloc.Inspect(t.Context(), "overlay.ov"); err != nil || len(allocs) > 0 {
		t.Errorf("a failed attach left allocations %v, %v", allocs, err)
	}
	// Attached, then again into a container that cannot take it: the
	// first attachment stays.
	ep, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctr, IfName: "eth1"})
	if err != nil {
		t.Fatal(err)
	}
	other := nstest.Container(t, hostNS)
	if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: other, IfName: "eth1"}); err == nil {
		t.Error("attaching c1 again into another container: no error")
	}
	if kvs, _, _ := store.List(t.Context(), "overlay/ep/"); len(kvs) != 1 {
		t.Errorf("a failed second attach took the first's record: %d records", len(kvs))
	}
	if _, allocs, _ := alloc.Inspect(t.Context(), "overlay.ov"); len(allocs) != 1 || allocs[0].Leases()[0].Addr != ep.Addrs[0] {
		t.Errorf("a failed second attach took the first's address: %v", allocs)
	}
	if err := n.Detach(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}

	// A deleted network.
	if err := h.Delete(t.Context(), "ov"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c2", NS: ctr, IfName: "eth2"}); !errors.Is(err, overlay.ErrNotFound) {
		t.Errorf("Attach to a deleted network: %v, want ErrNotFound", err)
	}

	if _, err := h.Network(t.Context(), "a/b"); !errors.As(err, &ve) {
		t.Errorf("Network with a bad name: %v", err)
	}
	if err := h.Delete(t.Context(), ""); !errors.As(err, &ve) {
		t.Errorf("Delete with an empty name: %v", err)
	}
	// Nil and zero handles.
	for name, h := range map[string]*overlay.Host{"nil": nil, "zero": {}} {
		if _, err := h.Create(t.Context(), overlay.Config{Name: "x", VNI: 1, Subnets: subnets("10.83.0.0/24")}); !errors.As(err, &ve) {
			t.Errorf("%s Host: Create: %v", name, err)
		}
		if _, err := h.Network(t.Context(), "x"); !errors.As(err, &ve) {
			t.Errorf("%s Host: Network: %v", name, err)
		}
		if err := h.Delete(t.Context(), "x"); !errors.As(err, &ve) {
			t.Errorf("%s Host: Delete: %v", name, err)
		}
		if _, err := h.Stats(t.Context()); !errors.As(err, &ve) {
			t.Errorf("%s Host: Stats: %v", name, err)
		}
		if err := h.Close(t.Context()); !errors.As(err, &ve) {
			t.Errorf("%s Host: Close: %v", name, err)
		}
		if _, err := h.GC(t.Context(), overlay.Live{}); !errors.As(err, &ve) {
			t.Errorf("%s Host: GC: %v", name, err)
		}
	}
	for name, n := range map[string]*overlay.Network{"nil": nil, "zero": {}} {
		if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c", NS: ctr}); !errors.As(err, &ve) {
			t.Errorf("%s Network: Attach: %v", name, err)
		}
		if err := n.Detach(t.Context(), "c"); !errors.As(err, &ve) {
			t.Errorf("%s Network: Detach: %v", name, err)
		}
		if err := n.Check(t.Context()); !errors.As(err, &ve) {
			t.Errorf("%s Network: Check: %v", name, err)
		}
		if err := n.CheckEndpoint(t.Context(), "c", ctr); !errors.As(err, &ve) {
			t.Errorf("%s Network: CheckEndpoint: %v", name, err)
		}
		_ = n.Config()
	}
}
