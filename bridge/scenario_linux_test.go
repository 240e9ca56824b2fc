package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func subnet(p, gw string) []ipam.SubnetConfig {
	s := ipam.SubnetConfig{Subnet: netip.MustParsePrefix(p)}
	if gw != "" {
		s.Gateway = addr(gw)
	}
	return []ipam.SubnetConfig{s}
}

// TestUserDefinedNetworks is S6.
func TestUserDefinedNetworks(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	newNet(t, host, alloc, Config{Name: "bridge", Bridge: "docker0", Subnets: subnet("172.17.0.0/16", "172.17.0.1")})
	// docker network create mynet: the next free subnet.
	mynet := newNet(t, host, alloc, Config{Name: "mynet"})
	if got := mynet.Config().Subnets; got[0].Subnet != netip.MustParsePrefix("172.18.0.0/16") || got[0].Gateway != addr("172.18.0.1") {
		t.Fatalf("auto subnet after docker0: %+v, want 172.18.0.0/16 gw .1", got)
	}
	// --subnet 172.21.0.0/16 --gateway 172.21.0.254 --ip-range 172.21.100.0/24
	net21 := newNet(t, host, alloc, Config{Name: "net21", Subnets: []ipam.SubnetConfig{{
		Subnet: netip.MustParsePrefix("172.21.0.0/16"), Gateway: addr("172.21.0.254"), IPRange: netip.MustParsePrefix("172.21.100.0/24"),
	}}})
	ctr, e := attach(t, net21, "c1", EndpointConfig{DefaultRoute: true})
	if a := e.Addrs[0].Addr(); !netip.MustParsePrefix("172.21.100.0/24").Contains(a) {
		t.Fatalf("address %s outside the ip-range", a)
	}
	mustPing(t, "c1 to its gateway .254", ctr, addr("172.21.0.254"))
	info, _ := net21.Inspect(t.Context())
	if info.Subnets[0].IPRange != netip.MustParsePrefix("172.21.100.0/24") {
		t.Errorf("Inspect lost the ip-range: %+v", info.Subnets)
	}

	// --subnet 172.10.0.0/16 --gateway 172.10.0.1; --ip 172.10.0.100
	net10 := newNet(t, host, alloc, Config{Name: "net10", Subnets: subnet("172.10.0.0/16", "172.10.0.1")})
	_, e = attach(t, net10, "static", EndpointConfig{Addrs: []netip.Addr{addr("172.10.0.100")}})
	if e.Addrs[0] != netip.MustParsePrefix("172.10.0.100/16") {
		t.Fatalf("static address: %v", e.Addrs)
	}
	// A taken --ip is refused, and nothing is left of the attempt.
	before := nstest.LinkNames(t, host)
	other := nstest.Container(t, host)
	if _, err := net10.Attach(t.Context(), EndpointConfig{ID: "other", NS: other, Addrs: []netip.Addr{addr("172.10.0.100")}}); err == nil {
		t.Fatal("a taken --ip was given out twice")
	}
	if after := nstest.LinkNames(t, host); !slices.Equal(before, after) {
		t.Fatalf("links before %v, after the refused attach %v", before, after)
	}
	if got := nstest.LinkNames(t, other); len(got) != 1 {
		t.Fatalf("the refused container has %v", got)
	}
	// An address outside the subnet is refused too.
	if _, err := net10.Attach(t.Context(), EndpointConfig{ID: "other", NS: other, Addrs: []netip.Addr{addr("172.11.0.5")}}); err == nil {
		t.Fatal("an address outside the subnet was accepted")
	}

	// Removing a network that has containers is refused.
	if err := net10.Delete(t.Context(), false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Delete with endpoints: %v, want ErrInUse", err)
	}
}

// TestIsolation: containers on different networks of one host cannot reach
// each other in either direction, though the host routes both subnets and
// forwards; a container on both reaches both.
func TestIsolation(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	alloc := newAlloc(t)
	a := newNet(t, host, alloc, Config{Name: "a", Subnets: subnet("10.1.0.0/24", "")})
	b := newNet(t, host, alloc, Config{Name: "b", Subnets: subnet("10.2.0.0/24", "")})
	ca, ea := attach(t, a, "ca", EndpointConfig{DefaultRoute: true})
	cb, eb := attach(t, b, "cb", EndpointConfig{DefaultRoute: true})
	mustPing(t, "a to its gateway", ca, addr("10.1.0.1"))
	mustPing(t, "host to a container of a", host, ea.Addrs[0].Addr())
	mustPing(t, "host to a container of b", host, eb.Addrs[0].Addr())
	mustNotPing(t, "a to b", ca, eb.Addrs[0].Addr())
	mustNotPing(t, "b to a", cb, ea.Addrs[0].Addr())
	srv := nstest.Serve(t, cb, "tcp", "0.0.0.0:80")
	if _, err := nstest.Exchange(t.Context(), ca, "tcp", netip.AddrPortFrom(eb.Addrs[0].Addr(), srv.Addr.Port()).String(), "x"); err == nil {
		t.Error("TCP from a to b got through")
	}

	// Connect ca to b: eth1 with an address of b; now it reaches cb.
	e1, err := b.Attach(t.Context(), EndpointConfig{ID: "ca", NS: ca})
	if err != nil {
		t.Fatal(err)
	}
	if e1.IfName != "eth1" || !netip.MustParsePrefix("10.2.0.0/24").Contains(e1.Addrs[0].Addr()) {
		t.Fatalf("connect: %+v, want eth1 in 10.2.0.0/24", e1)
	}
	mustPing(t, "ca (connected to b) to cb", ca, eb.Addrs[0].Addr())
	r, err := nstest.Exchange(t.Context(), ca, "tcp", netip.AddrPortFrom(eb.Addrs[0].Addr(), srv.Addr.Port()).String(), "x")
	if err != nil || r.Peer.Addr() != e1.Addrs[0].Addr() {
		t.Errorf("TCP from ca to cb on b: %+v, %v", r, err)
	}
	// Disconnect: eth1 and its address go, eth0 stays.
	if err := b.Detach(t.Context(), "ca"); err != nil {
		t.Fatal(err)
	}
	if got := nstest.LinkNames(t, ca); !slices.Equal(got, []string{"lo", "eth0"}) && !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Fatalf("after disconnect: %v", got)
	}
	mustNotPing(t, "ca (disconnected from b) to cb", ca, eb.Addrs[0].Addr())
	mustPing(t, "ca still on a", ca, addr("10.1.0.1"))
	if err := b.Detach(t.Context(), "ca"); err != nil {
		t.Fatalf("second disconnect: %v", err)
	}
}

// TestICCDisabled: with DisableICC, containers of one network do not talk.
func TestICCDisabled(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	host.SetSysctl("net.ipv4.ip_forward", "1")
	n := newNet(t, host, newAlloc(t), Config{Name: "noicc", DisableICC: true, Subnets: subnet("10.3.0.0/24", "")})
	c1, e1 := attach(t, n, "c1", EndpointConfig{DefaultRoute: true})
	c2, e2 := attach(t, n, "c2", EndpointConfig{DefaultRoute: true})
	mustPing(t, "c1 to the gateway", c1, addr("10.3.0.1"))
	mustNotPing(t, "c1 to c2", c1, e2.Addrs[0].Addr())
	mustNotPing(t, "c2 to c1", c2, e1.Addrs[0].Addr())
}

// TestInternal: an internal network's containers reach each other and the
// gateway, and nothing beyond, even where the outside routes their subnet.
func TestInternal(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	host.SetSysctl("net.ipv4.ip_forward", "1")
	out := nstest.NewOutside(t, host)
	// The outside routes both subnets back to the host: without NAT, only
	// nsnet's rules stand between the containers and the outside.
	oh, _ := out.NS.Netlink()
	for _, s := range []string{"10.4.0.0/24", "10.5.0.0/24"} {
		dst := netip.MustParsePrefix(s)
		if err := oh.RouteAdd(&netlink.Route{Dst: ipnet.From(dst), Gw: out.HostAddr.Addr().AsSlice()}); err != nil {
			t.Fatal(err)
		}
		defer oh.RouteDel(&netlink.Route{Dst: ipnet.From(dst), Gw: out.HostAddr.Addr().AsSlice()})
	}
	alloc := newAlloc(t)
	internal := newNet(t, host, alloc, Config{Name: "internal", Internal: true, Subnets: subnet("10.4.0.0/24", "")})
	open := newNet(t, host, alloc, Config{Name: "open", Subnets: subnet("10.5.0.0/24", "")})
	ci, _ := attach(t, internal, "ci", EndpointConfig{DefaultRoute: true})
	_, ei2 := attach(t, internal, "ci2", EndpointConfig{DefaultRoute: true})
	co, _ := attach(t, open, "co", EndpointConfig{DefaultRoute: true})
	mustPing(t, "open network to the outside", co, out.Addr)
	mustNotPing(t, "internal network to the outside", ci, out.Addr)
	mustPing(t, "internal network to its gateway", ci, addr("10.4.0.1"))
	mustPing(t, "internal network container to container", ci, ei2.Addrs[0].Addr())
}

// TestModes is S5: none, host and container:<name>.
func TestModes(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "modes", Subnets: subnet("10.6.0.0/24", "")})

	// none: only lo, up.
	none := nstest.Container(t, host)
	if err := None(t.Context(), none); err != nil {
		t.Fatal(err)
	}
	if got := nstest.LinkNames(t, none); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("none: %v", got)
	}
	mustPing(t, "none: 127.0.0.1", none, addr("127.0.0.1"))

	// host: the same namespace as the host; attaching is refused.
	hostMode, err := HostMode(host)
	if err != nil {
		t.Fatal(err)
	}
	defer hostMode.Close()
	if !hostMode.Equal(host) {
		t.Fatal("host mode is not the host's namespace")
	}
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "h", NS: hostMode}); !errors.Is(err, ErrHostMode) {
		t.Fatalf("Attach in host mode: %v, want ErrHostMode", err)
	}
	if err := None(t.Context(), hostMode); err == nil {
		t.Fatal("None accepted the host, which has a bridge")
	}
	// Its ports collide with the host's.
	l, err := host.Listen("tcp", "127.0.0.1:8081")
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := hostMode.Listen("tcp", "127.0.0.1:8081"); err == nil {
		l2.Close()
		t.Error("host-mode container bound the host's port")
	}
	l.Close()

	// container:<owner>: the joiner shares the owner's interfaces and lo.
	owner, e := attach(t, n, "owner", EndpointConfig{DefaultRoute: true})
	joiner, err := Join(owner)
	if err != nil {
		t.Fatal(err)
	}
	defer joiner.Close()
	if got := nstest.LinkNames(t, joiner); !slices.Contains(got, "eth0") {
		t.Fatalf("joiner's interfaces: %v", got)
	}
	srv := nstest.Serve(t, owner, "tcp", "127.0.0.1:9000")
	if r, err := nstest.Exchange(t.Context(), joiner, "tcp", "127.0.0.1:9000", "lo"); err != nil || r.Data != "lo" {
		t.Fatalf("joiner to owner over 127.0.0.1: %+v, %v", r, err)
	}
	if l, err := joiner.Listen("tcp", "127.0.0.1:9000"); err == nil {
		l.Close()
		t.Error("the joiner bound a port the owner uses")
	}
	srv.Close()
	mustPing(t, "joiner pings through the owner's eth0", joiner, addr("10.6.0.1"))
	_ = e
	// When the owner's endpoints go, the joiner is left with lo.
	if err := n.Detach(t.Context(), "owner"); err != nil {
		t.Fatal(err)
	}
	if got := nstest.LinkNames(t, joiner); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("joiner after the owner left: %v", got)
	}
}

// TestTwoContainersMustTalk is S12: interfaces on a common network, or a
// shared namespace; nothing else.
func TestTwoContainersMustTalk(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	host.SetSysctl("net.ipv4.ip_forward", "1")
	alloc := newAlloc(t)
	x := newNet(t, host, alloc, Config{Name: "x", Subnets: subnet("10.7.0.0/24", "")})
	y := newNet(t, host, alloc, Config{Name: "y", Subnets: subnet("10.8.0.0/24", "")})
	c1, _ := attach(t, x, "c1", EndpointConfig{DefaultRoute: true})
	_, e2 := attach(t, y, "c2", EndpointConfig{DefaultRoute: true})
	mustNotPing(t, "no common network", c1, e2.Addrs[0].Addr())
	e1y, err := y.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1})
	if err != nil {
		t.Fatal(err)
	}
	mustPing(t, "a common network", c1, e2.Addrs[0].Addr())
	_ = e1y
}

// TestRemoval: Detach and Delete succeed whatever is already gone, and twice.
func TestRemoval(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n, err := New(t.Context(), host, alloc, Config{Name: "gone", Subnets: subnet("10.9.0.0/24", "")})
	if err != nil {
		t.Fatal(err)
	}
	// A container whose namespace goes away before Detach.
	ctr, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "dies", NS: ctr}); err != nil {
		t.Fatal(err)
	}
	ctr.Close()
	if err := n.Detach(t.Context(), "dies"); err != nil {
		t.Fatalf("Detach after the namespace went: %v", err)
	}
	if err := n.Detach(t.Context(), "dies"); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := n.Detach(t.Context(), "never-attached"); err != nil {
		t.Fatalf("Detach of an unknown endpoint: %v", err)
	}
	// The address was released: the next container may have it.
	c2 := nstest.Container(t, host)
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c2", NS: c2}); err != nil {
		t.Fatal(err)
	}
	if err := n.Delete(t.Context(), false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Delete with an endpoint: %v", err)
	}
	if err := n.Delete(t.Context(), true); err != nil {
		t.Fatalf("forced Delete: %v", err)
	}
	if err := n.Delete(t.Context(), true); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if got := nstest.LinkNames(t, c2); len(got) != 1 {
		t.Fatalf("container after forced Delete: %v", got)
	}
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "late", NS: c2}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Attach to a deleted network: %v, want ErrNotFound", err)
	}

	// Delete after someone else removed the bridge.
	n2, err := New(t.Context(), host, alloc, Config{Name: "gone2", Subnets: subnet("10.9.0.0/24", "")})
	if err != nil {
		t.Fatalf("re-creating a network on a freed subnet: %v", err)
	}
	h, _ := host.Netlink()
	l, _ := h.LinkByName(n2.Config().Bridge)
	h.LinkDel(l)
	if err := n2.Delete(t.Context(), false); err != nil {
		t.Fatalf("Delete after the bridge was removed: %v", err)
	}
}

// TestAttachIdempotent: attaching the same endpoint again returns it; other
// settings are ErrExists; a taken interface name fails and leaves nothing.
func TestAttachIdempotent(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "idem", Subnets: subnet("10.10.0.0/24", "")})
	ctr, e := attach(t, n, "c1", EndpointConfig{DefaultRoute: true})
	again, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, DefaultRoute: true})
	if err != nil || again.Addrs[0] != e.Addrs[0] || again.HostVeth != e.HostVeth || again.MAC.String() != e.MAC.String() {
		t.Fatalf("Attach again: %+v, %v; first %+v", again, err, e)
	}
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, IfName: "eth7"}); !errors.Is(err, ErrExists) {
		t.Fatalf("Attach with other settings: %v, want ErrExists", err)
	}
	// The container's eth0 is taken: the attach of another endpoint naming
	// it fails, and releases its address.
	before := nstest.LinkNames(t, host)
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c2", NS: ctr, IfName: "eth0"}); err == nil {
		t.Fatal("attached a second eth0")
	}
	if after := nstest.LinkNames(t, host); !slices.Equal(before, after) {
		t.Fatalf("host links %v after a failed attach, %v before", after, before)
	}
	if got := held(t, n, "c2"); len(got) != 0 {
		t.Fatalf("the failed attach kept addresses %v", got)
	}
}

// TestAttachSameConcurrently attaches one endpoint from several goroutines
// at once, through two Network values of the same network (as two parts of
// a program that each opened it). Each call returns the one endpoint, and
// none of them releases the address the endpoint holds: before, a loser
// of the race released it while the winner's veth used it.
func TestAttachSameConcurrently(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "race", Subnets: subnet("10.12.0.0/24", "")})
	other, err := Open(t.Context(), host, alloc, "race")
	if err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		ctr := nstest.Container(t, host)
		id := fmt.Sprintf("c%d", round)
		eps := make([]Endpoint, 6)
		errs := make([]error, 6)
		var wg sync.WaitGroup
		for i := range eps {
			nw := n
			if i%2 == 1 {
				nw = other
			}
			wg.Go(func() { eps[i], errs[i] = nw.Attach(t.Context(), EndpointConfig{ID: id, NS: ctr, DefaultRoute: true}) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: attach %d: %v", round, i, err)
			}
			if eps[i].Addrs[0] != eps[0].Addrs[0] || eps[i].HostVeth != eps[0].HostVeth {
				t.Fatalf("round %d: attach %d returned %+v, attach 0 %+v", round, i, eps[i], eps[0])
			}
		}
		got := held(t, n, id)
		if len(got) != 1 || got[0].IPv4.Addr != eps[0].Addrs[0] {
			t.Fatalf("round %d: the pool holds %v for the endpoint, its interface has %v", round, got, eps[0].Addrs)
		}
		mustPing(t, "the endpoint's gateway", ctr, addr("10.12.0.1"))
	}
}

// TestAttachFailsHalfWay injects a failure after the veth exists.
func TestAttachFailsHalfWay(t *testing.T) {
	// Not parallel: afterVeth is package state.
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "half", Subnets: subnet("10.11.0.0/24", "")})
	ctr := nstest.Container(t, host)
	before := nstest.LinkNames(t, host)
	injected := errors.New("injected")
	afterVeth = func() error { return injected }
	_, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, Addrs: []netip.Addr{addr("10.11.0.50")}})
	afterVeth = nil
	if !errors.Is(err, injected) {
		t.Fatalf("Attach: %v, want the injected error", err)
	}
	if after := nstest.LinkNames(t, host); !slices.Equal(before, after) {
		t.Fatalf("host links after the failure: %v (before %v)", after, before)
	}
	if got := nstest.LinkNames(t, ctr); len(got) != 1 {
		t.Fatalf("container links after the failure: %v", got)
	}
	// The static address was released: another container can take it now.
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "c2", NS: ctr, Addrs: []netip.Addr{addr("10.11.0.50")}}); err != nil {
		t.Fatalf("the address was not released: %v", err)
	}
}

// TestGatewayPriority: a container on two networks, both marked for the
// default route, uses the one with the higher priority; when it goes, the
// other takes over.
func TestGatewayPriority(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	a := newNet(t, host, alloc, Config{Name: "gwa", Subnets: subnet("10.12.0.0/24", "")})
	b := newNet(t, host, alloc, Config{Name: "gwb", Subnets: subnet("10.13.0.0/24", "")})
	ctr, _ := attach(t, a, "c", EndpointConfig{DefaultRoute: true, GatewayPriority: 1})
	if _, err := b.Attach(t.Context(), EndpointConfig{ID: "c", NS: ctr, DefaultRoute: true, GatewayPriority: 5}); err != nil {
		t.Fatal(err)
	}
	best := func() string {
		h, _ := ctr.Netlink()
		r, err := h.RouteGet(net.ParseIP("203.0.113.9"))
		if err != nil || len(r) == 0 {
			return fmt.Sprint(err)
		}
		return r[0].Gw.String()
	}
	if got := best(); got != "10.13.0.1" {
		t.Fatalf("default route via %s, want 10.13.0.1 (priority 5)", got)
	}
	if err := b.Detach(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	if got := best(); got != "10.12.0.1" {
		t.Fatalf("after detaching b, default route via %s, want 10.12.0.1", got)
	}
}

// TestManyContainers: 200 containers attached concurrently to one network
// get unique addresses and all answer the gateway; detaching them all
// leaves nothing.
func TestManyContainers(t *testing.T) {
	t.Parallel()
	const count = 200
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "many", Subnets: subnet("10.20.0.0/16", "")})
	before := nstest.LinkNames(t, host)
	ctrs := make([]*netns.NS, count)
	eps := make([]Endpoint, count)
	var wg sync.WaitGroup
	errs := make(chan error, count)
	for i := range count {
		wg.Go(func() {
			ctr, err := netns.New()
			if err != nil {
				errs <- err
				return
			}
			ctrs[i] = ctr
			e, err := n.Attach(context.Background(), EndpointConfig{ID: fmt.Sprintf("c%03d", i), NS: ctr})
			if err != nil {
				errs <- err
				return
			}
			eps[i] = e
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range ctrs {
			c.Close()
		}
	}()
	seen := map[netip.Addr]string{}
	for _, e := range eps {
		a := e.Addrs[0].Addr()
		if other, dup := seen[a]; dup {
			t.Fatalf("%s given to %s and %s", a, other, e.ID)
		}
		seen[a] = e.ID
	}
	var failed sync.Map
	sem := make(chan struct{}, 32)
	for _, e := range eps {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := nstest.Ping(context.Background(), host, e.Addrs[0].Addr()); err != nil {
				failed.Store(e.ID, err)
			}
		})
	}
	wg.Wait()
	failed.Range(func(k, v any) bool { t.Errorf("gateway to %v: %v", k, v); return true })
	for _, e := range eps {
		wg.Go(func() {
			if err := n.Detach(context.Background(), e.ID); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if after := nstest.LinkNames(t, host); !slices.Equal(before, after) {
		t.Fatalf("after detaching all: %d links, %d before", len(after), len(before))
	}
	if info, _ := n.Inspect(t.Context()); len(info.Endpoints) != 0 {
		t.Fatalf("Inspect after detaching all: %d endpoints", len(info.Endpoints))
	}
}

// TestDualStack: a network with an IPv4 and an IPv6 subnet gives each
// container an address of each, a default route of each family via the
// gateways, and traffic over both; isolation between networks holds for
// IPv6 as for IPv4 (`docker network create --ipv6`).
func TestDualStack(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := host.SetSysctl(k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	alloc := newAlloc(t)
	dual := func(v4, v6 string) []ipam.SubnetConfig {
		return append(subnet(v4, ""), subnet(v6, "")...)
	}
	a := newNet(t, host, alloc, Config{Name: "a", Subnets: dual("10.11.0.0/24", "fd00:11::/64")})
	b := newNet(t, host, alloc, Config{Name: "b", Subnets: dual("10.12.0.0/24", "fd00:12::/64")})
	if got := a.Config().Subnets; len(got) != 2 || got[1].Gateway != addr("fd00:11::1") {
		t.Fatalf("subnets of a: %+v, want an IPv6 gateway fd00:11::1", got)
	}
	c1, e1 := attach(t, a, "c1", EndpointConfig{DefaultRoute: true})
	c2, e2 := attach(t, a, "c2", EndpointConfig{DefaultRoute: true})
	cb, eb := attach(t, b, "cb", EndpointConfig{DefaultRoute: true})
	v6 := func(e Endpoint) netip.Addr {
		t.Helper()
		for _, p := range e.Addrs {
			if p.Addr().Is6() {
				if p.Bits() != 64 {
					t.Errorf("%s: %s, want a /64", e.ID, p)
				}
				return p.Addr()
			}
		}
		t.Fatalf("%s has no IPv6 address: %v", e.ID, e.Addrs)
		return netip.Addr{}
	}
	a1, a2, ab := v6(e1), v6(e2), v6(eb)
	if !netip.MustParsePrefix("fd00:11::/64").Contains(a1) {
		t.Fatalf("c1's IPv6 address %s is not in a's subnet", a1)
	}

	// The container sees its addresses and both default routes.
	err := c1.Do(func() error {
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			rs, err := netlink.RouteList(nil, fam)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(rs, func(r netlink.Route) bool {
				return isDefault(r) && r.Gw != nil && (r.Gw.Equal(net.ParseIP("10.11.0.1")) || r.Gw.Equal(net.ParseIP("fd00:11::1")))
			}) {
				return fmt.Errorf("no default route via a's gateway for family %d: %v", fam, rs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	mustPing(t, "c1 to its IPv6 gateway", c1, addr("fd00:11::1"))
	mustPing(t, "c1 to c2 over IPv6", c1, a2)
	mustPing(t, "host to c1 over IPv6", host, a1)
	mustPing(t, "c1 to c2 over IPv4", c1, e2.Addrs[0].Addr())
	srv := nstest.Serve(t, c2, "tcp", "[::]:8080")
	r, err := nstest.Exchange(t.Context(), c1, "tcp", netip.AddrPortFrom(a2, srv.Addr.Port()).String(), "x")
	if err != nil || r.Peer.Addr() != a1 {
		t.Errorf("TCP over IPv6 from c1 to c2: %+v, %v; want the peer %s", r, err, a1)
	}

	// Isolation holds for IPv6: the host routes fd00:11::/64 and
	// fd00:12::/64 and forwards, but a and b do not reach each other.
	mustPing(t, "host to cb over IPv6", host, ab)
	mustNotPing(t, "a to b over IPv6", c1, ab)
	mustNotPing(t, "b to a over IPv6", cb, a1)
	srvb := nstest.Serve(t, cb, "tcp", "[::]:8080")
	if _, err := nstest.Exchange(t.Context(), c1, "tcp", netip.AddrPortFrom(ab, srvb.Addr.Port()).String(), "x"); err == nil {
		t.Error("TCP over IPv6 from a to b got through")
	}

	// Detach frees both addresses.
	if err := a.Detach(t.Context(), "c2"); err != nil {
		t.Fatal(err)
	}
	if h := held(t, a, "c2"); len(h) != 0 {
		t.Errorf("after detach, c2 still holds %+v", h)
	}
	mustNotPing(t, "c1 to the detached c2 over IPv6", c1, a2)
}
