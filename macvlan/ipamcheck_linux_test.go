package macvlan

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
)

// held returns the allocations of endpoint id in n's pool.
func held(t testing.TB, n *Network, id string) []netip.Prefix {
	t.Helper()
	_, allocs, err := n.alloc.Inspect(t.Context(), n.pool)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(allocs, func(a ipam.Allocation) bool { return a.Owner == endpointOwner(n.cfg.Name, id) })
	if i < 0 {
		return nil
	}
	addrs, _ := leases(allocs[i])
	return addrs
}

func overlap(a, b []netip.Prefix) bool {
	return slices.ContainsFunc(a, func(x netip.Prefix) bool {
		return slices.ContainsFunc(b, func(y netip.Prefix) bool { return x.Addr() == y.Addr() })
	})
}

// TestStoreReset: after the IPAM store was lost or reset, no attach is
// handed an address that a live container still holds (the anchor records
// it), the holder's allocation is made again (by New's repair, or by the
// attach that found it), a static address of a live container is refused,
// and the holder's idempotent Attach keeps its addresses.
func TestStoreReset(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	subnets := []ipam.SubnetConfig{{Subnet: prefix("172.29.0.0/24")}, {Subnet: prefix("fd00:29::/64")}}
	cfg := Config{Name: "reset", Parent: "eth0", Subnets: subnets}
	n := newNet(t, host, newAlloc(t), cfg)
	c1, e1 := attach(t, n, "c1", "")
	if len(e1.Addrs) != 2 {
		t.Fatalf("c1 has %v, want two addresses", e1.Addrs)
	}

	// A store reset behind nsnet's back: the pool is there again, empty.
	reset := newAlloc(t)
	if _, err := reset.CreatePool(t.Context(), ipam.PoolConfig{Name: poolName("reset"), Subnets: n.cfg.Subnets}); err != nil {
		t.Fatal(err)
	}
	m, err := Open(t.Context(), host, reset, "reset")
	if err != nil {
		t.Fatal(err)
	}
	c2, e2 := attach(t, m, "c2", "")
	if overlap(e2.Addrs, e1.Addrs) {
		t.Fatalf("c2 was handed %v, and c1 holds %v", e2.Addrs, e1.Addrs)
	}
	if got := held(t, m, "c1"); !slices.Equal(got, e1.Addrs) {
		t.Errorf("c1's allocation in the reset store: %v, want %v", got, e1.Addrs)
	}
	mustPing(t, "c2 to c1", c2, e1.Addrs[0].Addr())
	mustPing(t, "c1 to c2 over IPv6", c1, e2.Addrs[1].Addr())

	// A store lost altogether: New makes the pool again and gives the
	// live endpoints their addresses back at once.
	lost := newAlloc(t)
	k, err := New(t.Context(), host, lost, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string][]netip.Prefix{"c1": e1.Addrs, "c2": e2.Addrs} {
		if got := held(t, k, id); !slices.Equal(got, want) {
			t.Errorf("after New on a lost store, %s holds %v, want %v", id, got, want)
		}
	}
	// A static address a live container holds is refused, and the store
	// it came from does not know.
	fresh := newAlloc(t)
	if _, err := fresh.CreatePool(t.Context(), ipam.PoolConfig{Name: poolName("reset"), Subnets: n.cfg.Subnets}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(t.Context(), host, fresh, "reset")
	if err != nil {
		t.Fatal(err)
	}
	ctr := nstest.Container(t, host)
	_, err = f.Attach(t.Context(), EndpointConfig{ID: "c3", NS: ctr, Addrs: []netip.Addr{e1.Addrs[0].Addr()}})
	if !errors.Is(err, ipam.ErrAddrInUse) {
		t.Errorf("Attach with c1's address as static: %v, want ipam.ErrAddrInUse", err)
	}
	if got := linkNames(t, ctr); len(got) != 1 {
		t.Errorf("the refused attach left %v in the container", got)
	}
	// The holder's idempotent Attach keeps its addresses, in the store
	// and on the anchor.
	again, err := f.Attach(t.Context(), EndpointConfig{ID: "c1", NS: c1, DefaultRoute: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Addrs, e1.Addrs) || !slices.Equal(held(t, f, "c1"), e1.Addrs) {
		t.Errorf("c1 attached again: %v, held %v, want %v", again.Addrs, held(t, f, "c1"), e1.Addrs)
	}
	if err := f.CheckEndpoint(t.Context(), "c1", c1); err != nil {
		t.Error(err)
	}

	// Detach drops the record: the address is free again.
	if err := f.Detach(t.Context(), "c1", c1); err != nil {
		t.Fatal(err)
	}
	l, err := f.anchorLink()
	if err != nil {
		t.Fatal(err)
	}
	if c := byID(claimsOf(l)); c["c1"] != nil || len(c["c2"]) != 2 {
		t.Errorf("after c1's Detach the anchor records %v, want c2's two addresses", c)
	}
}

// TestClaimNames: what the anchor records reads back, and names that are
// not records are not taken for them.
func TestClaimNames(t *testing.T) {
	for _, c := range []struct {
		a  string
		id string
	}{{"10.0.0.5", "c1"}, {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "an-ID.of_64-bytes-0123456789012345678901234567890123456789012345"}, {"172.29.0.1", shimSuffix}} {
		name := claimName(addr(c.a), c.id)
		if len(name) > 127 {
			t.Errorf("%s: longer than an alternative name may be", name)
		}
		a, id, ok := parseClaim(name)
		if !ok || a != addr(c.a) || id != c.id {
			t.Errorf("parseClaim(%q) = %v %q %v", name, a, id, ok)
		}
	}
	for _, bad := range []string{"eth0", "10.0.0.5", "10.0.0.5@", "@c1", "010.0.0.5@c1", "10.0.0.5@.x", "mv-0123@c1"} {
		if _, _, ok := parseClaim(bad); ok {
			t.Errorf("parseClaim(%q): taken for a record", bad)
		}
	}
}
