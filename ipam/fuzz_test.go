package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/ipnet"
)

// FuzzPoolConfig: whatever the configuration, CreatePool either refuses it
// with a *ValidationError before writing anything, or creates a pool whose
// addresses are host addresses of their subnet, in the ip-range if there is
// one, and never the gateway or a reserved address.
func FuzzPoolConfig(f *testing.F) {
	f.Add("n", "172.21.0.0/16", "172.21.0.254", "172.21.100.0/24", "172.21.100.7", "")
	f.Add("v6", "fd00:1::/64", "", "", "", "10.1.0.0/30")
	f.Add("x", "10.0.0.1/24", "10.0.1.1", "10.0.0.0/16", "10.0.0.0", "10.0.0.0/25")
	f.Add("", "::ffff:10.0.0.0/120", "", "", "", "")
	f.Add("a.b", "10.9.0.0/31", "", "", "", "10.9.0.0/16")
	f.Fuzz(func(t *testing.T, name, subnet, gateway, ipRange, reserved, subnet2 string) {
		ctx := context.Background()
		sc := SubnetConfig{Subnet: parsePrefix(subnet), Gateway: parseAddr(gateway), IPRange: parsePrefix(ipRange)}
		if r := parseAddr(reserved); r.IsValid() {
			sc.Reserved = []netip.Addr{r}
		}
		cfg := PoolConfig{Name: name}
		if subnet != "" {
			cfg.Subnets = append(cfg.Subnets, sc)
		}
		if subnet2 != "" {
			cfg.Subnets = append(cfg.Subnets, SubnetConfig{Subnet: parsePrefix(subnet2)})
		}
		store := NewMemoryStore()
		a, _ := New(store, Config{})
		verr := cfg.Validate()
		p, err := a.CreatePool(ctx, cfg)
		if verr != nil {
			var ve *ValidationError
			if !errors.As(verr, &ve) || !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, CreatePool = %v; want *ValidationError from both", verr, err)
			}
			if kvs, _, _ := store.List(ctx, ""); len(kvs) != 0 {
				t.Fatalf("a refused pool wrote %d keys", len(kvs))
			}
			return
		}
		if err != nil {
			t.Fatalf("Validate passed, CreatePool = %v", err)
		}
		if len(cfg.Subnets) > 0 && len(p.Subnets) != len(cfg.Subnets) {
			t.Fatalf("pool has %d subnets, asked for %d", len(p.Subnets), len(cfg.Subnets))
		}
		for i := range 20 {
			al, err := a.Allocate(ctx, p.Name, fmt.Sprint("o", i))
			if errors.Is(err, ErrExhausted) {
				break
			}
			if err != nil {
				t.Fatalf("Allocate %d: %v", i, err)
			}
			for _, l := range al.Leases() {
				checkLease(t, p, l)
			}
		}
	})
}

func parsePrefix(s string) netip.Prefix { p, _ := netip.ParsePrefix(s); return p }
func parseAddr(s string) netip.Addr     { a, _ := netip.ParseAddr(s); return a }

// checkLease checks that a dynamic lease is an address the pool may hand out.
func checkLease(t *testing.T, p Pool, l Lease) {
	t.Helper()
	a := l.Addr.Addr()
	for _, sc := range p.Subnets {
		if !sc.Subnet.Contains(a) {
			continue
		}
		if l.Addr.Bits() != sc.Subnet.Bits() || l.Gateway != sc.Gateway {
			t.Fatalf("lease %s gw %s in subnet %s gw %s", l.Addr, l.Gateway, sc.Subnet, sc.Gateway)
		}
		last := ipnet.Last(sc.Subnet)
		switch {
		case a == sc.Subnet.Addr(), a.Is4() && a == last:
			t.Fatalf("%s: not a host address of %s", a, sc.Subnet)
		case a == sc.Gateway:
			t.Fatalf("%s: the gateway", a)
		case sc.IPRange.IsValid() && !sc.IPRange.Contains(a):
			t.Fatalf("%s: outside ip-range %s", a, sc.IPRange)
		}
		for _, r := range sc.Reserved {
			if a == r {
				t.Fatalf("%s: reserved", a)
			}
		}
		return
	}
	t.Fatalf("%s: in no subnet of %v", a, p.Subnets)
}

// FuzzAllocate runs a sequence of allocations and releases, across
// restarts (a new Allocator reading the stored state), against a model
// of Docker's semantics: dynamic addresses follow the last one handed out
// and wrap, statics are refused when taken or not host addresses, and an
// owner always gets back what it holds.
func FuzzAllocate(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87, 0x98, 0xa9, 0xba})
	f.Add([]byte("allocate release static reload gc exhaust the pool and come back"))
	f.Fuzz(runSequence)
}

// runSequence is FuzzAllocate's body: ops against the allocator and the model.
func runSequence(t *testing.T, ops []byte) {
	ctx := context.Background()
	store := NewMemoryStore()
	a, _ := New(store, Config{})
	// 13 IPv4 and 14 IPv6 addresses to hand out: small enough to exhaust.
	cfg := PoolConfig{Name: "f", Subnets: []SubnetConfig{
		{Subnet: pfx("10.0.0.0/28")},
		{Subnet: pfx("fd00::/124")},
	}}
	if _, err := a.CreatePool(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	m := newModel()
	for i, op := range ops {
		owner := fmt.Sprint("c", op&7)
		host := int(op>>3) & 15 // 0..15: network, gateway, hosts, broadcast
		switch op >> 7 {
		case 0: // allocate, dynamic or static
			var static []netip.Addr
			if op&0x40 != 0 {
				static = []netip.Addr{v4(host)}
			}
			al, err := a.Allocate(ctx, "f", owner, static...)
			want, werr := m.allocate(owner, static)
			if kind(err) != kind(werr) {
				t.Fatalf("op %d: Allocate(%s, %v) = %v, %v; model: %v, %v", i, owner, static, al, err, want, werr)
			}
			if err == nil && (al.IPv4.Addr.Addr() != want[0] || al.IPv6.Addr.Addr() != want[1]) {
				t.Fatalf("op %d: Allocate(%s, %v) = %s %s; model: %s %s", i, owner, static, al.IPv4.Addr, al.IPv6.Addr, want[0], want[1])
			}
		default:
			switch op & 0x60 {
			case 0x00:
				if err := a.Release(ctx, "f", owner); err != nil {
					t.Fatal(err)
				}
				m.release(owner)
			case 0x20:
				if err := a.ReleaseAddr(ctx, "f", v4(host)); err != nil {
					t.Fatal(err)
				}
				m.releaseAddr(v4(host))
			case 0x40: // restart: a new allocator reads the stored state
				a, _ = New(store, Config{})
			case 0x60:
				if _, err := a.GC(ctx, "f", func(o string) bool { return o < owner }); err != nil {
					t.Fatal(err)
				}
				for o := range m.owners {
					if o >= owner {
						m.release(o)
					}
				}
			}
		}
	}
	_, als, err := a.Inspect(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if len(als) != len(m.owners) {
		t.Fatalf("pool holds %d owners, model %d", len(als), len(m.owners))
	}
	for _, al := range als {
		h := m.owners[al.Owner]
		if al.IPv4.Addr.Addr() != h[0] || al.IPv6.Addr.Addr() != h[1] {
			t.Fatalf("%s holds %s %s, model %s %s", al.Owner, al.IPv4.Addr, al.IPv6.Addr, h[0], h[1])
		}
	}
}

// kind names the class of an error, to compare with the model's.
func kind(err error) string {
	var ve *ValidationError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ve):
		return "invalid"
	case errors.Is(err, ErrExists):
		return "exists"
	case errors.Is(err, ErrAddrInUse):
		return "in use"
	case errors.Is(err, ErrExhausted):
		return "exhausted"
	}
	return err.Error()
}

func v4(host int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(host)}) }
func v6(host int) netip.Addr {
	b := pfx("fd00::/124").Addr().As16()
	b[15] = byte(host)
	return netip.AddrFrom16(b)
}

// model is the pool of FuzzAllocate done the simplest way: host 1 is the
// gateway, hosts 2 to 14 (and 15 in IPv6, which has no broadcast) are
// handed out, dynamically from after the last one handed out.
type model struct {
	owners map[string][2]netip.Addr
	taken  map[netip.Addr]string
	cursor [2]int
}

func newModel() *model {
	return &model{owners: map[string][2]netip.Addr{}, taken: map[netip.Addr]string{}, cursor: [2]int{1, 1}}
}

func (m *model) allocate(owner string, static []netip.Addr) ([2]netip.Addr, error) {
	if h, ok := m.owners[owner]; ok {
		if len(static) > 0 && static[0] != h[0] {
			return h, ErrExists
		}
		return h, nil
	}
	var h [2]netip.Addr
	if len(static) > 0 {
		s := static[0]
		host := int(s.As4()[3])
		switch {
		case host == 0 || host == 1 || host == 15:
			return h, &ValidationError{}
		case m.taken[s] != "":
			return h, ErrAddrInUse
		}
		h[0] = s
	}
	last := [2]int{14, 15}
	addr := [2]func(int) netip.Addr{v4, v6}
	var next [2]int
	for f := range 2 {
		if h[f].IsValid() {
			continue
		}
		for i := range last[f] - 1 {
			host := 2 + (m.cursor[f]-2+1+i+last[f]-1)%(last[f]-1)
			if m.taken[addr[f](host)] == "" {
				h[f], next[f] = addr[f](host), host
				break
			}
		}
		if !h[f].IsValid() {
			return [2]netip.Addr{}, ErrExhausted
		}
	}
	for f := range 2 {
		if next[f] != 0 {
			m.cursor[f] = next[f]
		}
		m.taken[h[f]] = owner
	}
	m.owners[owner] = h
	return h, nil
}

func (m *model) release(owner string) {
	for _, a := range m.owners[owner] {
		delete(m.taken, a)
	}
	delete(m.owners, owner)
}

func (m *model) releaseAddr(a netip.Addr) {
	owner := m.taken[a]
	if owner == "" {
		return
	}
	delete(m.taken, a)
	h := m.owners[owner]
	h[0] = netip.Addr{}
	if h[1].IsValid() {
		m.owners[owner] = h
	} else {
		delete(m.owners, owner)
	}
}
