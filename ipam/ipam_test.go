package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func newMem(t testing.TB) *Allocator {
	t.Helper()
	a, err := New(NewMemoryStore(), Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func mustPool(t testing.TB, a *Allocator, cfg PoolConfig) Pool {
	t.Helper()
	p, err := a.CreatePool(t.Context(), cfg)
	if err != nil {
		t.Fatalf("CreatePool(%s): %v", cfg.Name, err)
	}
	return p
}

func mustAlloc(t testing.TB, a *Allocator, pool, owner string, static ...netip.Addr) Allocation {
	t.Helper()
	al, err := a.Allocate(t.Context(), pool, owner, static...)
	if err != nil {
		t.Fatalf("Allocate(%s, %s, %v): %v", pool, owner, static, err)
	}
	return al
}

// TestDocker_S6 follows SCENARIOS.md S6 (and S2's docker0): the addresses
// Docker hands out for the same commands.
func TestDocker_S6(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)

	// docker0: 172.17.0.0/16, gateway .1; containers .2, .3.
	br := mustPool(t, a, PoolConfig{Name: "bridge"})
	if got, want := br.Subnets[0].Subnet, pfx("172.17.0.0/16"); got != want {
		t.Fatalf("first auto subnet = %s, want %s", got, want)
	}
	if got := mustAlloc(t, a, "bridge", "c1").IPv4.Addr; got != pfx("172.17.0.2/16") {
		t.Errorf("first container on bridge = %s, want 172.17.0.2/16", got)
	}
	if got := mustAlloc(t, a, "bridge", "c2").IPv4.Addr; got != pfx("172.17.0.3/16") {
		t.Errorf("second container on bridge = %s, want 172.17.0.3/16", got)
	}

	// docker network create mynet: the next free subnet, gateway .1.
	mynet := mustPool(t, a, PoolConfig{Name: "mynet"})
	want := []SubnetConfig{{Subnet: pfx("172.18.0.0/16"), Gateway: addr("172.18.0.1")}}
	if diff := cmp.Diff(want, mynet.Subnets, cmp.Comparer(func(x, y netip.Addr) bool { return x == y }), cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("mynet subnets (-want +got):\n%s", diff)
	}
	al := mustAlloc(t, a, "mynet", "c3")
	if al.IPv4.Addr != pfx("172.18.0.2/16") || al.IPv4.Gateway != addr("172.18.0.1") {
		t.Errorf("container on mynet = %s via %s, want 172.18.0.2/16 via 172.18.0.1", al.IPv4.Addr, al.IPv4.Gateway)
	}

	// --subnet 172.21.0.0/16 --gateway 172.21.0.254 --ip-range 172.21.100.0/24
	mustPool(t, a, PoolConfig{Name: "net21", Subnets: []SubnetConfig{{
		Subnet: pfx("172.21.0.0/16"), Gateway: addr("172.21.0.254"), IPRange: pfx("172.21.100.0/24"),
	}}})
	for i, want := range []string{"172.21.100.0/16", "172.21.100.1/16", "172.21.100.2/16"} {
		al := mustAlloc(t, a, "net21", fmt.Sprintf("r%d", i))
		if al.IPv4.Addr != pfx(want) || al.IPv4.Gateway != addr("172.21.0.254") {
			t.Errorf("container %d on net21 = %s via %s, want %s via 172.21.0.254", i, al.IPv4.Addr, al.IPv4.Gateway, want)
		}
	}

	// --subnet 172.10.0.0/16 --gateway 172.10.0.1; --ip 172.10.0.100.
	mustPool(t, a, PoolConfig{Name: "net10", Subnets: []SubnetConfig{{Subnet: pfx("172.10.0.0/16"), Gateway: addr("172.10.0.1")}}})
	al = mustAlloc(t, a, "net10", "web", addr("172.10.0.100"))
	if al.IPv4.Addr != pfx("172.10.0.100/16") || !al.IPv4.Static {
		t.Errorf("--ip 172.10.0.100 gave %+v", al.IPv4)
	}
	// A taken --ip is refused.
	_, err := a.Allocate(ctx, "net10", "other", addr("172.10.0.100"))
	if !errors.Is(err, ErrAddrInUse) {
		t.Errorf("taken --ip: err = %v, want ErrAddrInUse", err)
	}
	// Removing a network that still has containers is refused.
	if err := a.DeletePool(ctx, "net10"); !errors.Is(err, ErrInUse) {
		t.Errorf("DeletePool with a container: err = %v, want ErrInUse", err)
	}
	if err := a.Release(ctx, "net10", "web"); err != nil {
		t.Fatal(err)
	}
	if err := a.DeletePool(ctx, "net10"); err != nil {
		t.Errorf("DeletePool after release: %v", err)
	}
}

func TestAllocate_idempotent(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.1.0.0/24")}}})
	first := mustAlloc(t, a, "n", "c1/eth0")
	again := mustAlloc(t, a, "n", "c1/eth0")
	if first != again {
		t.Errorf("second Allocate for the same owner = %+v, want %+v", again, first)
	}
	// A static address that is the one held is fine; another is not.
	if got := mustAlloc(t, a, "n", "c1/eth0", first.IPv4.Addr.Addr()); got != first {
		t.Errorf("Allocate with the held address = %+v, want %+v", got, first)
	}
	if _, err := a.Allocate(ctx, "n", "c1/eth0", addr("10.1.0.77")); !errors.Is(err, ErrExists) || !errors.Is(err, os.ErrExist) {
		t.Errorf("Allocate with another static address: err = %v, want ErrExists", err)
	}
}

func TestAllocate_noImmediateReuse(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	// 10.2.0.0/29: .1 gateway, .2-.6 hosts, .7 broadcast.
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.2.0.0/29")}}})
	got := func(owner string) string { return mustAlloc(t, a, "n", owner).IPv4.Addr.Addr().String() }
	if g := got("a"); g != "10.2.0.2" {
		t.Fatalf("a = %s", g)
	}
	if g := got("b"); g != "10.2.0.3" {
		t.Fatalf("b = %s", g)
	}
	a.Release(ctx, "n", "a")
	if g := got("c"); g != "10.2.0.4" {
		t.Errorf("after releasing .2, c = %s, want 10.2.0.4 (not the released one)", g)
	}
	got("d") // .5
	got("e") // .6
	// Wraps to the start: .2 is free again.
	if g := got("f"); g != "10.2.0.2" {
		t.Errorf("after the wrap, f = %s, want 10.2.0.2", g)
	}
	if _, err := a.Allocate(ctx, "n", "g"); !errors.Is(err, ErrExhausted) {
		t.Errorf("full pool: err = %v, want ErrExhausted", err)
	}
	a.ReleaseAddr(ctx, "n", addr("10.2.0.5"))
	if g := got("g"); g != "10.2.0.5" {
		t.Errorf("after ReleaseAddr(.5), g = %s, want 10.2.0.5", g)
	}
}

func TestAllocate_staticStaysReserved(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.3.0.0/29")}}})
	mustAlloc(t, a, "n", "db", addr("10.3.0.3"))
	// Dynamic allocation goes around it, again and again.
	for i := range 20 {
		al := mustAlloc(t, a, "n", "x")
		if al.IPv4.Addr.Addr() == addr("10.3.0.3") {
			t.Fatalf("round %d: the static address of db was handed out", i)
		}
		a.Release(ctx, "n", "x")
	}
	// The owner gets it back.
	if al := mustAlloc(t, a, "n", "db", addr("10.3.0.3")); al.IPv4.Addr.Addr() != addr("10.3.0.3") {
		t.Errorf("db = %s", al.IPv4.Addr)
	}
}

func TestAllocate_ipv6Large(t *testing.T) {
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "v6", Subnets: []SubnetConfig{{Subnet: pfx("fd00:1::/64")}}})
	for i := range 1000 {
		al := mustAlloc(t, a, "v6", fmt.Sprint("c", i))
		if want := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 14: byte((i + 2) >> 8), 15: byte(i + 2)}), 64); al.IPv6.Addr != want {
			t.Fatalf("allocation %d = %s, want %s", i, al.IPv6.Addr, want)
		}
		if al.IPv4.IsValid() {
			t.Fatalf("IPv6-only pool gave IPv4 %s", al.IPv4.Addr)
		}
	}
	// A /64 with an ip-range at its very end wraps without walking 2^64.
	mustPool(t, a, PoolConfig{Name: "end", Subnets: []SubnetConfig{{Subnet: pfx("fd00:2::/64"), IPRange: pfx("fd00:2::ffff:ffff:ffff:fff8/125")}}})
	var got []string
	for i := range 8 {
		got = append(got, mustAlloc(t, a, "end", fmt.Sprint("c", i)).IPv6.Addr.Addr().String())
	}
	want := []string{"fd00:2::ffff:ffff:ffff:fff8", "fd00:2::ffff:ffff:ffff:fff9", "fd00:2::ffff:ffff:ffff:fffa", "fd00:2::ffff:ffff:ffff:fffb",
		"fd00:2::ffff:ffff:ffff:fffc", "fd00:2::ffff:ffff:ffff:fffd", "fd00:2::ffff:ffff:ffff:fffe", "fd00:2::ffff:ffff:ffff:ffff"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("range at the end of a /64 (-want +got):\n%s", diff)
	}
	if _, err := a.Allocate(t.Context(), "end", "more"); !errors.Is(err, ErrExhausted) {
		t.Errorf("full range: err = %v, want ErrExhausted", err)
	}
}

func TestAllocate_dualStack(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "ds", Subnets: []SubnetConfig{
		{Subnet: pfx("10.4.0.0/24")},
		{Subnet: pfx("fd00:4::/64"), Gateway: addr("fd00:4::ffff")},
	}})
	al := mustAlloc(t, a, "ds", "c1", addr("fd00:4::10"))
	if al.IPv4.Addr != pfx("10.4.0.2/24") || al.IPv4.Gateway != addr("10.4.0.1") || al.IPv4.Static {
		t.Errorf("IPv4 lease = %+v", al.IPv4)
	}
	if al.IPv6.Addr != pfx("fd00:4::10/64") || al.IPv6.Gateway != addr("fd00:4::ffff") || !al.IPv6.Static {
		t.Errorf("IPv6 lease = %+v", al.IPv6)
	}
	if n := len(al.Leases()); n != 2 {
		t.Errorf("Leases() has %d, want 2", n)
	}
	// Release frees both; ReleaseAddr one.
	if err := a.ReleaseAddr(ctx, "ds", addr("10.4.0.2")); err != nil {
		t.Fatal(err)
	}
	_, allocs, _ := a.Inspect(ctx, "ds")
	if len(allocs) != 1 || allocs[0].IPv4.IsValid() || allocs[0].IPv6.Addr != pfx("fd00:4::10/64") {
		t.Errorf("after ReleaseAddr of the IPv4 address: %+v", allocs)
	}
	a.Release(ctx, "ds", "c1")
	if _, allocs, _ := a.Inspect(ctx, "ds"); len(allocs) != 0 {
		t.Errorf("after Release: %+v", allocs)
	}
	// Two statics of one family, or of a family the pool lacks, are refused.
	var ve *ValidationError
	if _, err := a.Allocate(ctx, "ds", "c2", addr("10.4.0.5"), addr("10.4.0.6")); !errors.As(err, &ve) {
		t.Errorf("two IPv4 statics: err = %v, want *ValidationError", err)
	}
	mustPool(t, a, PoolConfig{Name: "v4", Subnets: []SubnetConfig{{Subnet: pfx("10.5.0.0/24")}}})
	if _, err := a.Allocate(ctx, "v4", "c2", addr("fd00:4::20")); !errors.As(err, &ve) {
		t.Errorf("IPv6 static on an IPv4 pool: err = %v, want *ValidationError", err)
	}
}

func TestAllocate_multipleSubnets(t *testing.T) {
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "m", Subnets: []SubnetConfig{{Subnet: pfx("10.6.0.0/30")}, {Subnet: pfx("10.6.1.0/30")}}})
	// Like Docker: one address per family, from the first subnet with room.
	if got := mustAlloc(t, a, "m", "a").IPv4.Addr; got != pfx("10.6.0.2/30") {
		t.Errorf("a = %s", got)
	}
	if got := mustAlloc(t, a, "m", "b").IPv4.Addr; got != pfx("10.6.1.2/30") {
		t.Errorf("b = %s", got)
	}
	var ve *ValidationError
	if _, err := a.Allocate(t.Context(), "m", "c", addr("10.6.1.1")); !errors.As(err, &ve) {
		t.Errorf("the gateway of the second subnet as static: err = %v, want *ValidationError", err)
	}
}

func TestAllocate_badStatic(t *testing.T) {
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{
		Subnet: pfx("10.7.0.0/24"), Gateway: addr("10.7.0.254"), IPRange: pfx("10.7.0.128/25"), Reserved: []netip.Addr{addr("10.7.0.9")},
	}}})
	mustAlloc(t, a, "n", "holder", addr("10.7.0.5"))
	for _, tc := range []struct {
		static netip.Addr
		want   error // a sentinel, or nil for a *ValidationError
	}{
		{addr("10.8.0.5"), nil},   // outside the subnet
		{addr("10.7.0.0"), nil},   // network
		{addr("10.7.0.255"), nil}, // broadcast
		{addr("10.7.0.254"), nil}, // gateway
		{addr("10.7.0.9"), nil},   // reserved
		{addr("10.7.0.5"), ErrAddrInUse},
	} {
		_, err := a.Allocate(t.Context(), "n", "c", tc.static)
		var ve *ValidationError
		switch {
		case tc.want == nil && !errors.As(err, &ve):
			t.Errorf("static %s: err = %v, want *ValidationError", tc.static, err)
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("static %s: err = %v, want %v", tc.static, err, tc.want)
		}
	}
	// Outside the ip-range but inside the subnet is fine, as in Docker.
	if al := mustAlloc(t, a, "n", "c", addr("10.7.0.6")); al.IPv4.Addr != pfx("10.7.0.6/24") {
		t.Errorf("static outside the ip-range = %s", al.IPv4.Addr)
	}
	if _, err := a.Allocate(t.Context(), "n", ""); err == nil {
		t.Errorf("empty owner accepted")
	}
}

func TestCreatePool_validation(t *testing.T) {
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "taken", Subnets: []SubnetConfig{{Subnet: pfx("10.9.0.0/16")}}})
	for name, cfg := range map[string]PoolConfig{
		"no name":            {},
		"bad name":           {Name: "a/b"},
		"invalid subnet":     {Name: "x", Subnets: []SubnetConfig{{}}},
		"host bits":          {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.5/16")}}},
		"v4 /31":             {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/31")}}},
		"v4 /32":             {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/32")}}},
		"v6 /127":            {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("fd00::/127")}}},
		"gateway outside":    {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Gateway: addr("10.11.0.1")}}},
		"gateway network":    {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Gateway: addr("10.10.0.0")}}},
		"gateway broadcast":  {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Gateway: addr("10.10.0.255")}}},
		"gateway family":     {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Gateway: addr("fd00::1")}}},
		"range outside":      {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), IPRange: pfx("10.10.1.0/25")}}},
		"range larger":       {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), IPRange: pfx("10.10.0.0/23")}}},
		"range host bits":    {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), IPRange: pfx("10.10.0.1/25")}}},
		"range only gateway": {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), IPRange: pfx("10.10.0.0/31")}}},
		"reserved outside":   {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Reserved: []netip.Addr{addr("10.12.0.1")}}}},
		"reserved gateway":   {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/24"), Reserved: []netip.Addr{addr("10.10.0.1")}}}},
		"overlap in pool":    {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.10.0.0/16")}, {Subnet: pfx("10.10.5.0/24")}}},
		"overlap other pool": {Name: "x", Subnets: []SubnetConfig{{Subnet: pfx("10.9.128.0/17")}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := a.CreatePool(t.Context(), cfg)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			if name == "overlap in pool" || name == "overlap other pool" {
				if !errors.Is(err, ErrOverlap) {
					t.Errorf("err = %v, want ErrOverlap", err)
				}
			}
		})
	}
	pools, _ := a.Pools(t.Context())
	if len(pools) != 1 {
		t.Errorf("bad configs wrote pools: %v", pools)
	}
}

func TestCreatePool_idempotent(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	cfg := PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.20.0.0/16"), Gateway: addr("10.20.0.1")}}}
	p1 := mustPool(t, a, cfg)
	// The same settings, with the default gateway spelled out or not.
	p2 := mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.20.0.0/16")}}})
	if p1.ID != p2.ID {
		t.Errorf("CreatePool twice made two pools: %s, %s", p1.ID, p2.ID)
	}
	// No subnets: whatever it has.
	if p3 := mustPool(t, a, PoolConfig{Name: "n"}); p3.ID != p1.ID {
		t.Errorf("CreatePool without subnets on an existing pool made another")
	}
	_, err := a.CreatePool(ctx, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.21.0.0/16")}}})
	if !errors.Is(err, ErrExists) || !errors.Is(err, os.ErrExist) {
		t.Errorf("other settings: err = %v, want ErrExists", err)
	}
	// Delete twice; absent is success. Pool gone: Allocate says ErrNotFound,
	// Release succeeds.
	for range 2 {
		if err := a.DeletePool(ctx, "n"); err != nil {
			t.Errorf("DeletePool: %v", err)
		}
	}
	if _, err := a.Allocate(ctx, "n", "c"); !errors.Is(err, ErrNotFound) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Allocate in a deleted pool: err = %v, want ErrNotFound", err)
	}
	if err := a.Release(ctx, "n", "c"); err != nil {
		t.Errorf("Release in a deleted pool: %v", err)
	}
	// Deleted and created again, with other settings: a new pool.
	p4 := mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.21.0.0/16")}}})
	if p4.ID == p1.ID {
		t.Errorf("recreated pool kept its ID")
	}
	if got := mustAlloc(t, a, "n", "c").IPv4.Addr; got != pfx("10.21.0.2/16") {
		t.Errorf("allocation in the recreated pool = %s", got)
	}
}

type routes []netip.Prefix

func (r routes) RoutePrefixes(context.Context) ([]netip.Prefix, error) { return r, nil }

func TestCreatePool_autoSelect(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	p := mustPool(t, a, PoolConfig{Name: "a", Avoid: routes{pfx("0.0.0.0/0"), pfx("172.17.5.0/24"), pfx("fd00::/8")}, AvoidPrefixes: []netip.Prefix{pfx("172.18.0.0/15")}})
	if got := p.Subnets[0].Subnet; got != pfx("172.20.0.0/16") {
		t.Errorf("with 172.17.5.0/24 routed and 172.18.0.0/15 avoided: %s, want 172.20.0.0/16", got)
	}
	// Fill the /16s, then 192.168.0.0/16 as /20s.
	for i := range 14 {
		mustPool(t, a, PoolConfig{Name: fmt.Sprint("p", i)})
	}
	p = mustPool(t, a, PoolConfig{Name: "b"})
	if got := p.Subnets[0].Subnet; got != pfx("192.168.0.0/20") {
		t.Errorf("after the /16s: %s, want 192.168.0.0/20", got)
	}
	p = mustPool(t, a, PoolConfig{Name: "c"})
	if got := p.Subnets[0].Subnet; got != pfx("192.168.16.0/20") {
		t.Errorf("next: %s, want 192.168.16.0/20", got)
	}
	// Configurable default pools, and exhaustion.
	small, _ := New(NewMemoryStore(), Config{DefaultPools: []DefaultPool{{Base: pfx("10.99.0.0/23"), Size: 24}}})
	for i, want := range []string{"10.99.0.0/24", "10.99.1.0/24"} {
		if p := mustPool(t, small, PoolConfig{Name: fmt.Sprint("x", i)}); p.Subnets[0].Subnet != pfx(want) {
			t.Errorf("got %s, want %s", p.Subnets[0].Subnet, want)
		}
	}
	if _, err := small.CreatePool(ctx, PoolConfig{Name: "z"}); !errors.Is(err, ErrExhausted) {
		t.Errorf("no free subnet: err = %v, want ErrExhausted", err)
	}
	if _, err := New(NewMemoryStore(), Config{DefaultPools: []DefaultPool{{Base: pfx("10.0.0.0/8"), Size: 4}}}); err == nil {
		t.Errorf("default pool with size shorter than its base accepted")
	}
}

func TestGC(t *testing.T) {
	ctx := t.Context()
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.30.0.0/24")}}})
	for _, o := range []string{"live1", "dead1", "live2", "dead2"} {
		mustAlloc(t, a, "n", o)
	}
	live := map[string]bool{"live1": true, "live2": true}
	released, err := a.GC(ctx, "n", func(o string) bool { return live[o] })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range released {
		got = append(got, r.Owner+" "+r.IPv4.Addr.String())
	}
	if diff := cmp.Diff([]string{"dead1 10.30.0.3/24", "dead2 10.30.0.5/24"}, got); diff != "" {
		t.Errorf("GC released (-want +got):\n%s", diff)
	}
	_, allocs, _ := a.Inspect(ctx, "n")
	got = nil
	for _, al := range allocs {
		got = append(got, al.Owner)
		if al.IPv4.Time.IsZero() {
			t.Errorf("%s: no time", al.Owner)
		}
	}
	if diff := cmp.Diff([]string{"live1", "live2"}, got); diff != "" {
		t.Errorf("after GC (-want +got):\n%s", diff)
	}
	if r, err := a.GC(ctx, "absent", func(string) bool { return false }); err != nil || r != nil {
		t.Errorf("GC of an absent pool = %v, %v", r, err)
	}
}

func TestErrors(t *testing.T) {
	if !errors.Is(ErrNotFound, os.ErrNotExist) || !errors.Is(ErrExists, os.ErrExist) {
		t.Errorf("ErrNotFound/ErrExists do not match the os sentinels")
	}
	if errors.Is(ErrInUse, os.ErrExist) || errors.Is(ErrExhausted, ErrInUse) {
		t.Errorf("sentinels match each other")
	}
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.40.0.0/30")}}})
	mustAlloc(t, a, "n", "a")
	_, err := a.Allocate(t.Context(), "n", "b")
	if got, want := err.Error(), "ipam: allocate in pool n for b: IPv4: no free address"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	_, err = a.CreatePool(t.Context(), PoolConfig{Name: "m", Subnets: []SubnetConfig{{Subnet: pfx("10.40.0.0/24"), Gateway: addr("10.40.0.0")}}})
	if got, want := err.Error(), `ipam: PoolConfig.Subnets[0].Gateway "10.40.0.0": the network address of 10.40.0.0/24`; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}

func TestStoreCorruptValue(t *testing.T) {
	ctx := t.Context()
	s := NewMemoryStore()
	a, _ := New(s, Config{})
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.50.0.0/24")}}})
	kv, _ := s.Get(ctx, "ipam/pool/n")
	if _, err := s.CAS(ctx, Op{Key: "ipam/pool/n", Rev: kv.Rev, Value: kv.Value[:len(kv.Value)-1]}); err != nil {
		t.Fatal(err)
	}
	b, _ := New(s, Config{})
	_, err := b.Allocate(ctx, "n", "c")
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Key != "ipam/pool/n" {
		t.Errorf("Allocate on a corrupt state: err = %v, want *CorruptError naming the key", err)
	}
}

// TestAllocs keeps the memory-store hot path within its allocation budget.
func TestAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("slow with -race")
	}
	ctx := context.Background()
	a := newMem(t)
	mustPool(t, a, PoolConfig{Name: "n", Subnets: []SubnetConfig{{Subnet: pfx("10.60.0.0/16")}}})
	n := testing.AllocsPerRun(1000, func() {
		if _, err := a.Allocate(ctx, "n", "owner"); err != nil {
			t.Fatal(err)
		}
		if err := a.Release(ctx, "n", "owner"); err != nil {
			t.Fatal(err)
		}
	})
	const budget = 5
	if n > budget {
		t.Errorf("Allocate+Release: %v allocations, budget %d", n, budget)
	}
	t.Logf("Allocate+Release: %v allocations", n)
}
