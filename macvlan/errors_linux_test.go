package macvlan

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

// untouched fails the test if host's links or alloc's pools changed since
// the snapshot taken by the call that returned it.
func untouched(t *testing.T, host *netns.NS, alloc *ipam.Allocator) func(what string) {
	t.Helper()
	links := linkNames(t, host)
	pools, _ := alloc.Pools(context.Background())
	return func(what string) {
		t.Helper()
		if got := linkNames(t, host); !slices.Equal(got, links) {
			t.Errorf("%s: host links %v, before %v", what, got, links)
		}
		if got, _ := alloc.Pools(context.Background()); len(got) != len(pools) {
			t.Errorf("%s: pools %v, before %v", what, got, pools)
		}
	}
}

// TestBadNetwork: bad input to New is refused with a typed error before
// anything is changed.
func TestBadNetwork(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	// A parent that is down: one end of a veth pair, never set up.
	down := nstest.Name(t, "down")
	if _, err := veth.Pair(t.Context(), host, veth.Config{Name: down, Peer: veth.End{Name: nstest.Name(t, "dp")}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.Delete(context.Background(), host, down) })
	existing := newNet(t, host, alloc, Config{Name: "existing", Parent: "eth0", Subnets: s10()})
	_ = existing
	// Somebody's own passthru macvlan on another parent.
	held := nstest.Name(t, "held")
	if _, err := veth.Pair(t.Context(), host, veth.Config{Name: held, Peer: veth.End{Name: nstest.Name(t, "hp")}, Up: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.Delete(context.Background(), host, held) })
	h, _ := host.Netlink()
	hl, _ := h.LinkByName(held)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = nstest.Name(t, "usr")
	attrs.ParentIndex = hl.Attrs().Index
	if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_PASSTHRU}); err != nil {
		t.Fatal(err)
	}

	var ve *netns.ValidationError
	isValidation := func(err error) bool { return errors.As(err, &ve) }
	for _, tc := range []struct {
		name string
		cfg  Config
		want func(error) bool
	}{
		{"no name", Config{Parent: "eth0"}, isValidation},
		{"bad mode", Config{Name: "x", Parent: "eth0", Mode: "source"}, isValidation},
		{"no parent", Config{Name: "x"}, isValidation},
		{"gateway outside", Config{Name: "x", Parent: "eth0", Subnets: []ipam.SubnetConfig{{Subnet: prefix("10.1.0.0/24"), Gateway: addr("10.2.0.1")}}}, isValidation},
		{"missing parent", Config{Name: "x", Parent: "nosuch0"}, func(err error) bool { return errors.Is(err, ErrNotFound) }},
		{"parent down", Config{Name: "x", Parent: down}, isValidation},
		{"MTU above the parent's", Config{Name: "x", Parent: "eth0", MTU: 9000}, isValidation},
		{"parent is an anchor", Config{Name: "x", Parent: AnchorName("existing")}, isValidation},
		{"overlapping subnet", Config{Name: "x", Parent: "eth0", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.29.5.0/24")}}}, func(err error) bool { return errors.Is(err, ErrOverlap) }},
		{"passthru on a used parent", Config{Name: "x", Parent: "eth0", Mode: ModePassthru}, func(err error) bool { return errors.Is(err, ErrInUse) }},
		{"parent held by a passthru macvlan", Config{Name: "x", Parent: held}, func(err error) bool { return errors.Is(err, ErrInUse) }},
		{"same name, other settings", Config{Name: "existing", Parent: "eth0", Mode: ModePrivate}, func(err error) bool { return errors.Is(err, ErrExists) }},
	} {
		check := untouched(t, host, alloc)
		_, err := New(t.Context(), host, alloc, tc.cfg)
		if !tc.want(err) {
			t.Errorf("%s: New: %v", tc.name, err)
		}
		check(tc.name)
	}
	// The anchor's name taken by a link that is not nsnet's.
	taken := AnchorName("taken")
	if _, err := veth.Pair(t.Context(), host, veth.Config{Name: taken, Peer: veth.End{Name: nstest.Name(t, "tp")}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.Delete(context.Background(), host, taken) })
	check := untouched(t, host, alloc)
	if _, err := New(t.Context(), host, alloc, Config{Name: "taken", Parent: "eth0"}); !errors.Is(err, ErrExists) {
		t.Errorf("anchor name taken: %v, want ErrExists", err)
	}
	check("anchor name taken")
}

// TestBadEndpoint: bad input to Attach is refused with a typed error
// before anything is changed.
func TestBadEndpoint(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "bad", Parent: "eth0", Subnets: s10()})
	pt := newNet(t, nstest.Underlay(t, 1).Hosts[0].NS, newAlloc(t), Config{Name: "pt", Parent: "eth0", Mode: ModePassthru, Subnets: s10()})
	ctr := nstest.Container(t, host)
	// An interface of the container's own, named eth1.
	if _, err := veth.Pair(t.Context(), ctr, veth.Config{Name: "eth1", Peer: veth.End{Name: "eth1p"}}); err != nil {
		t.Fatal(err)
	}
	_, held := attach(t, n, "held", "172.29.0.9")
	_ = held

	var ve *netns.ValidationError
	isValidation := func(err error) bool { return errors.As(err, &ve) }
	for _, tc := range []struct {
		name string
		n    *Network
		ep   EndpointConfig
		want func(error) bool
	}{
		{"no ID", n, EndpointConfig{NS: ctr}, isValidation},
		{"no namespace", n, EndpointConfig{ID: "c"}, isValidation},
		{"host mode", n, EndpointConfig{ID: "c", NS: host}, func(err error) bool { return errors.Is(err, ErrHostMode) }},
		{"address outside the subnet", n, EndpointConfig{ID: "c", NS: ctr, Addrs: []netip.Addr{addr("10.0.0.81")}}, isValidation},
		{"the gateway's address", n, EndpointConfig{ID: "c", NS: ctr, Addrs: []netip.Addr{addr("172.29.0.254")}}, isValidation},
		{"two IPv4 addresses", n, EndpointConfig{ID: "c", NS: ctr, Addrs: []netip.Addr{addr("172.29.0.1"), addr("172.29.0.2")}}, isValidation},
		{"MTU above the parent's", n, EndpointConfig{ID: "c", NS: ctr, MTU: 1501}, isValidation},
		{"multicast MAC", n, EndpointConfig{ID: "c", NS: ctr, MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}, isValidation},
		{"interface name too long", n, EndpointConfig{ID: "c", NS: ctr, IfName: "a-very-long-name0"}, isValidation},
		{"interface name taken", n, EndpointConfig{ID: "c", NS: ctr, IfName: "eth1"}, func(err error) bool { return errors.Is(err, ErrExists) }},
		{"address taken", n, EndpointConfig{ID: "c", NS: ctr, Addrs: []netip.Addr{addr("172.29.0.9")}}, func(err error) bool { return errors.Is(err, ipam.ErrAddrInUse) }},
		{"MAC for passthru", pt, EndpointConfig{ID: "c", NS: ctr, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}, isValidation},
	} {
		check := untouched(t, host, alloc)
		ctrLinks := linkNames(t, ctr)
		_, err := tc.n.Attach(t.Context(), tc.ep)
		if !tc.want(err) {
			t.Errorf("%s: Attach: %v", tc.name, err)
		}
		check(tc.name)
		if got := linkNames(t, ctr); !slices.Equal(got, ctrLinks) {
			t.Errorf("%s: container links %v, before %v", tc.name, got, ctrLinks)
		}
		if eps := endpointsOf(t, tc.n); slices.Contains(eps, "c") {
			t.Errorf("%s: c holds addresses", tc.name)
		}
	}
	// Shim input.
	for _, tc := range []struct {
		name string
		cfg  ShimConfig
	}{
		{"no address", ShimConfig{}},
		{"address outside", ShimConfig{Addr: addr("10.0.0.1")}},
		{"route outside", ShimConfig{Addr: addr("172.29.0.91"), Routes: []netip.Prefix{prefix("10.0.0.0/8")}}},
		{"route with host bits", ShimConfig{Addr: addr("172.29.0.91"), Routes: []netip.Prefix{prefix("172.29.0.1/24")}}},
	} {
		check := untouched(t, host, alloc)
		if _, err := n.AddShim(t.Context(), tc.cfg); !isValidation(err) {
			t.Errorf("%s: AddShim: %v", tc.name, err)
		}
		check(tc.name)
	}
	if _, err := pt.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")}); !isValidation(err) {
		t.Errorf("AddShim on a passthru network: %v", err)
	}
	if _, err := n.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.9")}); !errors.Is(err, ipam.ErrAddrInUse) {
		t.Errorf("AddShim on a container's address: %v", err)
	}
	if info, _ := n.Inspect(t.Context()); info.Shim != nil {
		t.Errorf("a refused shim is there: %+v", info.Shim)
	}
}

// endpointsOf returns the IDs of the endpoints holding addresses in n's
// pool.
func endpointsOf(t testing.TB, n *Network) []string {
	t.Helper()
	_, allocs, err := n.alloc.Inspect(context.Background(), n.pool)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range endpoints(n.cfg.Name, allocs) {
		ids = append(ids, e.ID)
	}
	return ids
}

// TestIdempotent: New, Attach and AddShim again with the same settings
// return what exists; Detach, RemoveShim and Delete again, or of what is
// gone, succeed.
func TestIdempotent(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	cfg := Config{Name: "idem", Parent: "eth0", Subnets: s10()}
	n := newNet(t, host, alloc, cfg)
	again, err := New(t.Context(), host, alloc, cfg)
	if err != nil || again.Config().MTU != n.Config().MTU {
		t.Fatalf("New again: %v", err)
	}
	if _, err := New(t.Context(), host, alloc, Config{Name: "idem", Parent: "eth0"}); err != nil {
		t.Errorf("New again, subnets left to choose: %v", err)
	}
	if _, err := New(t.Context(), host, alloc, Config{Name: "idem", Parent: "eth0", MTU: 1400}); !errors.Is(err, ErrExists) {
		t.Errorf("New with another MTU: %v, want ErrExists", err)
	}

	ctr := nstest.Container(t, host)
	ep := EndpointConfig{ID: "c1", NS: ctr, Addrs: []netip.Addr{addr("172.29.0.81")}, DefaultRoute: true}
	e1, err := n.Attach(t.Context(), ep)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := again.Attach(t.Context(), ep)
	if err != nil || e2.MAC.String() != e1.MAC.String() || e2.IfName != e1.IfName || e2.Addrs[0] != e1.Addrs[0] {
		t.Errorf("Attach again: %+v, %v (first %+v)", e2, err, e1)
	}
	other := ep
	other.DefaultRoute = false
	if _, err := n.Attach(t.Context(), other); !errors.Is(err, ErrExists) {
		t.Errorf("Attach with other settings: %v, want ErrExists", err)
	}
	other = ep
	other.Addrs = []netip.Addr{addr("172.29.0.82")}
	if _, err := n.Attach(t.Context(), other); !errors.Is(err, ErrExists) {
		t.Errorf("Attach with another address: %v, want ErrExists", err)
	}
	if got := linkNames(t, ctr); len(got) != 2 {
		t.Errorf("container links: %v", got)
	}
	if err := n.Delete(t.Context(), false); !errors.Is(err, ErrInUse) {
		t.Errorf("Delete in use: %v, want ErrInUse", err)
	}

	// A container whose namespace is gone: Detach releases its address.
	gone, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(t.Context(), EndpointConfig{ID: "gone", NS: gone, Addrs: []netip.Addr{addr("172.29.0.83")}}); err != nil {
		t.Fatal(err)
	}
	gone.Close()
	if err := n.Detach(t.Context(), "gone", nil); err != nil {
		t.Errorf("Detach of a container that is gone: %v", err)
	}
	if slices.Contains(endpointsOf(t, n), "gone") {
		t.Errorf("the address of a gone container is held")
	}

	for range 2 {
		if err := n.Detach(t.Context(), "c1", ctr); err != nil {
			t.Errorf("Detach: %v", err)
		}
	}
	if err := n.Detach(t.Context(), "never", nil); err != nil {
		t.Errorf("Detach of what never was: %v", err)
	}
	if err := n.RemoveShim(t.Context()); err != nil {
		t.Errorf("RemoveShim with none: %v", err)
	}
	for range 2 {
		if err := again.Delete(t.Context(), false); err != nil {
			t.Errorf("Delete: %v", err)
		}
	}
	if err := n.RemoveShim(t.Context()); err != nil {
		t.Errorf("RemoveShim of a deleted network: %v", err)
	}
	if err := n.Detach(t.Context(), "c1", ctr); err != nil {
		t.Errorf("Detach from a deleted network: %v", err)
	}
	if _, err := n.Inspect(t.Context()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect of a deleted network: %v, want ErrNotFound", err)
	}
	if _, err := n.Attach(t.Context(), ep); err == nil {
		t.Errorf("Attach to a deleted network worked")
	}
}

// TestDeleteForce: Delete(force) detaches the containers this process
// attached, then removes the anchor (and the shim) and the pool.
func TestDeleteForce(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	before := linkNames(t, host)
	n, err := New(t.Context(), host, alloc, Config{Name: "force", Parent: "eth0", Subnets: s10()})
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := attach(t, n, "c1", "")
	c2, _ := attach(t, n, "c2", "")
	if _, err := n.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")}); err != nil {
		t.Fatal(err)
	}
	if err := n.Delete(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*netns.NS{c1, c2} {
		if got := linkNames(t, c); len(got) != 1 {
			t.Errorf("container links after Delete(force): %v", got)
		}
	}
	if got := linkNames(t, host); !slices.Equal(got, before) {
		t.Errorf("host links after Delete(force): %v, before %v", got, before)
	}
	if pools, _ := alloc.Pools(t.Context()); len(pools) != 0 {
		t.Errorf("pools after Delete(force): %v", pools)
	}
}

// The failure injections below are package state: these tests are not
// parallel.

// TestAttachFailsHalfWay: a failure once the container's interface exists
// leaves no interface and no address.
func TestAttachFailsHalfWay(t *testing.T) {
	for _, mode := range []Mode{ModeBridge, ModePassthru} {
		t.Run(string(mode), func(t *testing.T) {
			topo := nstest.Underlay(t, 1)
			host := topo.Hosts[0].NS
			alloc := newAlloc(t)
			n := newNet(t, host, alloc, Config{Name: "half", Parent: "eth0", Mode: mode, Subnets: s10()})
			ctr := nstest.Container(t, host)
			check := untouched(t, host, alloc)
			injected := errors.New("injected")
			afterLink = func() error { return injected }
			_, err := n.Attach(t.Context(), EndpointConfig{ID: "c1", NS: ctr, Addrs: []netip.Addr{addr("172.29.0.50")}})
			afterLink = nil
			if !errors.Is(err, injected) {
				t.Fatalf("Attach: %v, want the injected error", err)
			}
			check("after the failure") // for passthru: the anchor is back
			if got := linkNames(t, ctr); len(got) != 1 {
				t.Fatalf("container links after the failure: %v", got)
			}
			if eps := endpointsOf(t, n); len(eps) != 0 {
				t.Fatalf("addresses held after the failure: %v", eps)
			}
			// The address was released: another container can take it.
			_, e := attach(t, n, "c2", "172.29.0.50")
			if e.Addrs[0].Addr() != addr("172.29.0.50") {
				t.Fatalf("c2: %v", e.Addrs)
			}
		})
	}
}

// TestNewFailsHalfWay: a failure once the anchor exists leaves no anchor
// and no pool.
func TestNewFailsHalfWay(t *testing.T) {
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	alloc := newAlloc(t)
	check := untouched(t, host, alloc)
	injected := errors.New("injected")
	afterAnchor = func() error { return injected }
	_, err := New(t.Context(), host, alloc, Config{Name: "half", Parent: "eth0", Subnets: s10()})
	afterAnchor = nil
	if !errors.Is(err, injected) {
		t.Fatalf("New: %v, want the injected error", err)
	}
	check("after the failure")
	newNet(t, host, alloc, Config{Name: "half", Parent: "eth0", Subnets: s10()})
}

// TestShimFailsHalfWay: a failure once the shim has its address leaves the
// anchor down, without address, and the address free.
func TestShimFailsHalfWay(t *testing.T) {
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	n := newNet(t, host, newAlloc(t), Config{Name: "half", Parent: "eth0", Subnets: s10()})
	injected := errors.New("injected")
	afterShimAddr = func() error { return injected }
	_, err := n.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")})
	afterShimAddr = nil
	if !errors.Is(err, injected) {
		t.Fatalf("AddShim: %v, want the injected error", err)
	}
	l, err := n.anchorLink()
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := host.Addrs(l, netlink.FAMILY_ALL)
	if l.Attrs().Flags&net.FlagUp != 0 || len(addrs) != 0 {
		t.Errorf("anchor after the failure: flags %v, addresses %v", l.Attrs().Flags, addrs)
	}
	if _, allocs, _ := n.alloc.Inspect(t.Context(), n.pool); len(allocs) != 0 {
		t.Errorf("allocations after the failure: %v", allocs)
	}
	if _, err := n.AddShim(t.Context(), ShimConfig{Addr: addr("172.29.0.91")}); err != nil {
		t.Errorf("AddShim after the failure: %v", err)
	}
}
