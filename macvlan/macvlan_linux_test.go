package macvlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestTwoHosts is S10: a network on eth0 of two hosts, containers with
// static addresses .81 and .82 reach each other across hosts over ICMP and
// TCP without NAT; the host cannot reach its own container, even with a
// route through the parent, until the shim is added; detach removes the
// interface.
func TestTwoHosts(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 2)
	h1, h2 := topo.Hosts[0], topo.Hosts[1]
	n1 := newNet(t, h1.NS, newAlloc(t), Config{Name: "mv", Parent: "eth0", Subnets: s10()})
	n2 := newNet(t, h2.NS, newAlloc(t), Config{Name: "mv", Parent: "eth0", Subnets: s10()})
	c1, e1 := attach(t, n1, "c1", "172.29.0.81")
	c2, e2 := attach(t, n2, "c2", "172.29.0.82")
	a1, a2 := e1.Addrs[0].Addr(), e2.Addrs[0].Addr()
	if a1 != addr("172.29.0.81") || e1.Addrs[0].Bits() != 16 || e1.IfName != "eth0" {
		t.Fatalf("endpoint c1: %+v", e1)
	}
	// Nothing of the container's shows in the host.
	want := []string{"eth0", "lo", AnchorName("mv")}
	if got := linkNames(t, h1.NS); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Errorf("host 1 links: %v, want %v", got, want)
	}

	mustPing(t, "c1 -> c2 across hosts", c1, a2)
	mustPing(t, "c2 -> c1 across hosts", c2, a1)
	mustTCP(t, "c1 -> c2", c1, c2, a2, a1)
	mustTCP(t, "c2 -> c1", c2, c1, a1, a2)

	// The host cannot reach its own container, even with a route through
	// the parent: the kernel hands nothing from a parent to its macvlans.
	hostRoute(t, h1.NS, "eth0", prefix("172.29.0.0/16"))
	mustNotPing(t, "host 1 -> its own c1 without a shim", h1.NS, a1)
	mustNotPing(t, "c1 -> its own host 1 without a shim", c1, h1.Addr.Addr())

	shim, err := n1.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")})
	if err != nil {
		t.Fatalf("AddShim: %v", err)
	}
	if shim.Name != AnchorName("mv") || shim.Addr != prefix("172.29.0.91/32") || !slices.Equal(shim.Routes, []netip.Prefix{prefix("172.29.0.0/16")}) {
		t.Errorf("shim: %+v", shim)
	}
	mustPing(t, "host 1 -> c1 through the shim", h1.NS, a1)
	mustTCP(t, "host 1 -> c1 through the shim", h1.NS, c1, a1, addr("172.29.0.91"))
	mustTCP(t, "c1 -> host 1's shim address", c1, h1.NS, addr("172.29.0.91"), a1)
	mustPing(t, "host 1 -> c2 on host 2 through the shim", h1.NS, a2)
	info, err := n1.Inspect(t.Context())
	if err != nil || info.Shim == nil || info.Shim.Addr != shim.Addr {
		t.Errorf("Inspect: shim %+v, %v", info.Shim, err)
	}
	// The shim's address is reserved: no container can take it.
	if _, err := n1.Attach(t.Context(), EndpointConfig{ID: "c3", NS: nstest.Container(t, h1.NS), Addrs: []netip.Addr{addr("172.29.0.91")}}); err == nil {
		t.Errorf("a container got the shim's address")
	}
	// Adding it again is a no-op; another is refused.
	if again, err := n1.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")}); err != nil || again.Addr != shim.Addr {
		t.Errorf("AddShim again: %+v, %v", again, err)
	}
	if _, err := n1.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.92")}); !errors.Is(err, ErrExists) {
		t.Errorf("another shim: %v, want ErrExists", err)
	}
	if err := n1.RemoveShim(t.Context()); err != nil {
		t.Fatalf("RemoveShim: %v", err)
	}
	mustNotPing(t, "host 1 -> c1 after RemoveShim", h1.NS, a1)
	if err := n1.RemoveShim(t.Context()); err != nil {
		t.Errorf("RemoveShim again: %v", err)
	}

	// Detach removes the container's interface, and its address.
	if err := n1.Detach(t.Context(), "c1", c1); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if got := linkNames(t, c1); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("c1 links after Detach: %v", got)
	}
	mustNotPing(t, "c2 -> c1 after Detach", c2, a1)
	if err := n1.Detach(t.Context(), "c1", c1); err != nil {
		t.Errorf("Detach again: %v", err)
	}
	info, err = n1.Inspect(t.Context())
	if err != nil || len(info.Endpoints) != 0 {
		t.Errorf("Inspect after Detach: %+v, %v", info.Endpoints, err)
	}
	// Detach returns before the kernel has freed the interface, but after
	// it took it out of service: its address can go to another container
	// of the host at once, with a new MAC, and c2 reaches that one.
	c3, e3 := attach(t, n1, "c3", "172.29.0.81")
	if e3.Addrs[0].Addr() != a1 || e3.MAC.String() == e1.MAC.String() {
		t.Fatalf("endpoint c3: %+v, c1 was %+v", e3, e1)
	}
	mustTCP(t, "c2 -> c3, on c1's old address", c2, c3, a1, a2)
}

// TestThreeHosts: containers on three hosts, two of them on one host,
// all reach each other; a container's interface has the network's MTU
// and its default route via the gateway.
func TestThreeHosts(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 3)
	type ctr struct {
		name string
		host int
		addr netip.Addr
	}
	ctrs := []ctr{{"a", 0, addr("172.29.0.11")}, {"b", 1, addr("172.29.0.12")}, {"c", 2, addr("172.29.0.13")}, {"d", 2, addr("172.29.0.14")}}
	var nets []*Network
	for _, h := range topo.Hosts {
		nets = append(nets, newNet(t, h.NS, newAlloc(t), Config{Name: "three", Parent: "eth0", Subnets: s10()}))
	}
	var ns []*Endpoint
	for _, c := range ctrs {
		_, e := attach(t, nets[c.host], c.name, c.addr.String())
		ns = append(ns, &e)
	}
	for _, a := range ns {
		for _, b := range ns {
			if a != b {
				mustPing(t, a.ID+" -> "+b.ID, a.NS, b.Addrs[0].Addr())
			}
		}
	}
	mustTCP(t, "a -> d", ns[0].NS, ns[3].NS, ctrs[3].addr, ctrs[0].addr)
	mustTCP(t, "d -> c (one host, bridge mode)", ns[3].NS, ns[2].NS, ctrs[2].addr, ctrs[3].addr)

	h, _ := ns[0].NS.Netlink()
	l, err := h.LinkByName("eth0")
	if err != nil || l.Attrs().MTU != 1500 || l.Type() != "macvlan" {
		t.Errorf("a's eth0: %v, %v", l, err)
	}
	routes, err := ns[0].NS.Routes(0)
	if err != nil {
		t.Fatal(err)
	}
	var gw bool
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "172.29.0.254" && r.Priority == baseMetric {
			gw = true
		}
	}
	if !gw {
		t.Errorf("a has no default route via 172.29.0.254: %v", routes)
	}
}

// TestAllocated: addresses from the IPAM when none is given; an MTU below
// the parent's; the MAC asked for; a second network on the same parent.
func TestAllocated(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "auto", Parent: "eth0", MTU: 1400})
	if n.Config().Mode != ModeBridge || len(n.Config().Subnets) != 1 || n.Config().MTU != 1400 {
		t.Fatalf("config: %+v", n.Config())
	}
	mac := []byte{0x02, 0x42, 0xac, 0x1d, 0, 0x51}
	c1 := nstest.Container(t, host)
	e1, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1, MAC: mac, IfName: "mv0"})
	if err != nil {
		t.Fatal(err)
	}
	_, e2 := attach(t, n, "c2", "")
	if !n.Config().Subnets[0].Subnet.Contains(e1.Addrs[0].Addr()) || e1.Addrs[0] == e2.Addrs[0] {
		t.Errorf("addresses %v, %v in %v", e1.Addrs, e2.Addrs, n.Config().Subnets)
	}
	h, _ := c1.Netlink()
	l, err := h.LinkByName("mv0")
	if err != nil || l.Attrs().MTU != 1400 || l.Attrs().HardwareAddr.String() != "02:42:ac:1d:00:51" {
		t.Errorf("c1's mv0: %+v, %v", l, err)
	}
	mustPing(t, "c1 -> c2", c1, e2.Addrs[0].Addr())
	other := newNet(t, host, alloc, Config{Name: "other", Parent: "eth0", Subnets: s10()})
	_, e3 := attach(t, other, "c3", "172.29.0.3")
	if e3.Addrs[0].Addr() != addr("172.29.0.3") {
		t.Errorf("c3: %v", e3.Addrs)
	}
	infos, err := List(t.Context(), host, alloc)
	if err != nil || len(infos) != 2 || infos[0].Name != "auto" || len(infos[0].Endpoints) != 2 || infos[1].Parent != "eth0" {
		t.Errorf("List: %+v, %v", infos, err)
	}
	info, err := n.Inspect(t.Context())
	if err != nil || len(info.Endpoints) != 2 || info.Endpoints[0].IfName != "mv0" || info.Endpoints[0].NS != c1 {
		t.Errorf("Inspect: %+v, %v", info, err)
	}
}

// TestOpen: a later process (a new Network value on a new handle to the
// host, the same store) finds the network and its endpoints, detaches a
// container given its namespace, and deletes the network.
func TestOpen(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	n, err := New(t.Context(), host, alloc, Config{Name: "later", Parent: "eth0", Mode: ModeVEPA, Subnets: s10(), Labels: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := attach(t, n, "c1", "172.29.0.5")
	host2, err := host.Dup()
	if err != nil {
		t.Fatal(err)
	}
	defer host2.Close()
	o, err := Open(t.Context(), host2, alloc, "later")
	if err != nil {
		t.Fatal(err)
	}
	if c := o.Config(); c.Mode != ModeVEPA || c.Parent != "eth0" || c.Labels["a"] != "b" || c.MTU != 1500 || c.Subnets[0].Gateway != addr("172.29.0.254") {
		t.Errorf("Open: %+v", c)
	}
	if _, err := Open(t.Context(), host2, alloc, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(nope): %v", err)
	}
	if err := o.Delete(t.Context(), false); !errors.Is(err, ErrInUse) {
		t.Errorf("Delete with an endpoint: %v, want ErrInUse", err)
	}
	if err := o.Detach(t.Context(), "c1", c1); err != nil {
		t.Fatal(err)
	}
	if got := linkNames(t, c1); len(got) != 1 {
		t.Errorf("c1 after Detach: %v", got)
	}
	if err := o.Delete(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if err := n.Delete(t.Context(), false); err != nil {
		t.Errorf("Delete through the first value: %v", err)
	}
	if pools, _ := alloc.Pools(context.Background()); len(pools) != 0 {
		t.Errorf("pools left: %v", pools)
	}
}

// TestConcurrent: containers attached at once all get distinct addresses
// and reach each other; attaches of one container at once give one
// interface; detaches at once leave nothing.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	const count = 20
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	n := newNet(t, host, newAlloc(t), Config{Name: "many", Parent: "eth0", Subnets: s10()})
	ctrs := make([]*netns.NS, count)
	for i := range ctrs {
		ctrs[i] = nstest.Container(t, host)
	}
	eps := make([]Endpoint, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			eps[i], errs[i] = n.Attach(context.Background(), EndpointConfig{ID: fmt.Sprint("c", i%10), NS: ctrs[i%10]})
		})
	}
	wg.Wait()
	seen := map[netip.Prefix]bool{}
	for i := range count {
		if errs[i] != nil {
			t.Fatalf("Attach %d: %v", i, errs[i])
		}
		if i >= 10 {
			if eps[i].Addrs[0] != eps[i-10].Addrs[0] || eps[i].MAC.String() != eps[i-10].MAC.String() {
				t.Errorf("two attaches of c%d: %+v and %+v", i-10, eps[i], eps[i-10])
			}
			continue
		}
		if seen[eps[i].Addrs[0]] {
			t.Errorf("address %s given twice", eps[i].Addrs[0])
		}
		seen[eps[i].Addrs[0]] = true
		if got := linkNames(t, ctrs[i]); len(got) != 2 {
			t.Errorf("c%d links: %v", i, got)
		}
	}
	mustPing(t, "c0 -> c9", ctrs[0], eps[9].Addrs[0].Addr())
	for i := range 10 {
		wg.Go(func() { errs[i] = n.Detach(context.Background(), fmt.Sprint("c", i), nil) })
	}
	wg.Wait()
	for i := range 10 {
		if errs[i] != nil {
			t.Errorf("Detach c%d: %v", i, errs[i])
		}
		if got := linkNames(t, ctrs[i]); len(got) != 1 {
			t.Errorf("c%d links after Detach: %v", i, got)
		}
	}
	if ids := endpointsOf(t, n); len(ids) != 0 {
		t.Errorf("endpoints left: %v", ids)
	}
}

// TestDualStack: an IPv4 and an IPv6 subnet; containers on two hosts reach
// each other over both, and the host over an IPv6 shim.
func TestDualStack(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 2)
	subnets := append(s10(), ipam.SubnetConfig{Subnet: prefix("fd00:29::/64")})
	n1 := newNet(t, topo.Hosts[0].NS, newAlloc(t), Config{Name: "ds", Parent: "eth0", Subnets: subnets})
	n2 := newNet(t, topo.Hosts[1].NS, newAlloc(t), Config{Name: "ds", Parent: "eth0", Subnets: subnets})
	var eps []Endpoint
	for i, n := range []*Network{n1, n2} {
		ep := EndpointConfig{ID: "c", NS: nstest.Container(t, n.Host()), DefaultRoute: true,
			Addrs: []netip.Addr{addr(fmt.Sprint("172.29.0.", 81+i)), addr(fmt.Sprint("fd00:29::", 81+i))}}
		e, err := n.Attach(t.Context(), ep)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.Addrs) != 2 {
			t.Fatalf("addresses %v", e.Addrs)
		}
		eps = append(eps, e)
	}
	v6 := func(e Endpoint) netip.Addr { return e.Addrs[1].Addr() }
	mustPing(t, "c1 -> c2 over IPv6", eps[0].NS, v6(eps[1]))
	mustPing(t, "c1 -> c2 over IPv4", eps[0].NS, eps[1].Addrs[0].Addr())
	srv := nstest.Serve(t, eps[1].NS, "tcp6", "[fd00:29::82]:0")
	r, err := nstest.Exchange(t.Context(), eps[0].NS, "tcp6", srv.Addr.String(), "hi")
	if err != nil || r.Peer.Addr() != v6(eps[0]) {
		t.Errorf("TCP over IPv6: %+v, %v", r, err)
	}
	mustNotPing(t, "host 1 -> c1 over IPv6 without a shim", topo.Hosts[0].NS, v6(eps[0]))
	if _, err := n1.AddShim(t.Context(), ShimConfig{Addr: addr("fd00:29::91")}); err != nil {
		t.Fatal(err)
	}
	mustPing(t, "host 1 -> c1 over an IPv6 shim", topo.Hosts[0].NS, v6(eps[0]))
}
