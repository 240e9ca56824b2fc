package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/ipam"
)

// dump is everything a store holds, to compare before and after a call.
func dump(t *testing.T, s ipam.Store) []ipam.KV {
	t.Helper()
	kvs, _, err := s.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

// TestBadInput: each bad value class gets a *nsnet.ValidationError (or
// the sentinel named), without a panic and without a byte of the store
// changing.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	store := ipam.NewMemoryStore()
	a, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreatePool(ctx, ipam.PoolConfig{Name: "n", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.9.0.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate(ctx, "n", "c1"); err != nil {
		t.Fatal(err)
	}
	pool := func(subnet string) ipam.PoolConfig {
		return ipam.PoolConfig{Name: "p", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(subnet)}}}
	}
	var nilAlloc, zeroAlloc *ipam.Allocator = nil, &ipam.Allocator{}
	cases := []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"New(nil store)", func() error { _, err := ipam.New(nil, ipam.Config{}); return err }, nil},
		{"loopback subnet", func() error { _, err := a.CreatePool(ctx, pool("127.0.0.0/8")); return err }, nil},
		{"loopback /24", func() error { _, err := a.CreatePool(ctx, pool("127.1.2.0/24")); return err }, nil},
		{"this network", func() error { _, err := a.CreatePool(ctx, pool("0.0.0.0/8")); return err }, nil},
		{"everything v4", func() error { _, err := a.CreatePool(ctx, pool("0.0.0.0/0")); return err }, nil},
		{"multicast", func() error { _, err := a.CreatePool(ctx, pool("239.1.0.0/16")); return err }, nil},
		{"reserved", func() error { _, err := a.CreatePool(ctx, pool("250.0.0.0/8")); return err }, nil},
		{"link-local", func() error { _, err := a.CreatePool(ctx, pool("169.254.10.0/24")); return err }, nil},
		{"everything v6", func() error { _, err := a.CreatePool(ctx, pool("::/0")); return err }, nil},
		{"v6 link-local", func() error { _, err := a.CreatePool(ctx, pool("fe80::/64")); return err }, nil},
		{"v6 multicast", func() error { _, err := a.CreatePool(ctx, pool("ff02::/64")); return err }, nil},
		{"host bits", func() error { _, err := a.CreatePool(ctx, pool("10.1.0.1/16")); return err }, nil},
		{"too small", func() error { _, err := a.CreatePool(ctx, pool("10.1.0.0/31")); return err }, nil},
		{"overlap", func() error { _, err := a.CreatePool(ctx, pool("10.9.0.128/25")); return err }, ipam.ErrOverlap},
		{"bad name", func() error { _, err := a.CreatePool(ctx, ipam.PoolConfig{Name: "a b"}); return err }, nil},
		{"empty name", func() error { _, err := a.CreatePool(ctx, ipam.PoolConfig{}); return err }, nil},
		{"static outside", func() error { _, err := a.Allocate(ctx, "n", "c2", netip.MustParseAddr("10.10.0.5")); return err }, nil},
		{"static gateway", func() error { _, err := a.Allocate(ctx, "n", "c2", netip.MustParseAddr("10.9.0.1")); return err }, nil},
		{"empty owner", func() error { _, err := a.Allocate(ctx, "n", ""); return err }, nil},
		{"GC(nil)", func() error { _, err := a.GC(ctx, "n", nil); return err }, nil},
		{"no pool", func() error { _, err := a.Allocate(ctx, "nope", "c2"); return err }, ipam.ErrNotFound},
		{"pool in use", func() error { return a.DeletePool(ctx, "n") }, nsnet.ErrInUse},
		{"cancelled", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			_, err := a.Allocate(c, "n", "c2")
			return err
		}, context.Canceled},
	}
	for kind, al := range map[string]*ipam.Allocator{"nil": nilAlloc, "zero": zeroAlloc} {
		cases = append(cases,
			struct {
				name string
				call func() error
				want error
			}{kind + " Allocator: Allocate", func() error { _, err := al.Allocate(ctx, "n", "c"); return err }, nil},
			struct {
				name string
				call func() error
				want error
			}{kind + " Allocator: Pools", func() error { _, err := al.Pools(ctx); return err }, nil})
	}
	var zeroStore ipam.MemoryStore
	cases = append(cases, struct {
		name string
		call func() error
		want error
	}{"zero MemoryStore", func() error {
		_, err := zeroStore.Get(ctx, "x")
		if err == nil {
			err = (<-zeroStore.Watch(ctx, "", 0)).Err
		}
		return err
	}, nil})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := dump(t, store)
			var err error
			func() {
				defer func() {
					if v := recover(); v != nil {
						t.Fatalf("panic: %v", v)
					}
				}()
				err = tc.call()
			}()
			var ve *nsnet.ValidationError
			switch {
			case tc.want == nil && !errors.As(err, &ve):
				t.Errorf("err = %v, want a *nsnet.ValidationError", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if after := dump(t, store); !reflect.DeepEqual(before, after) {
				t.Errorf("the store changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}
