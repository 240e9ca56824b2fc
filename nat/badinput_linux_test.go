package nat_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestBadInputTable: every bad value class gets a *nsnet.ValidationError
// (or the sentinel named), without a panic and without a change to the
// host: no rule, no forwarding sysctl.
func TestBadInputTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	p := []netip.Prefix{netip.MustParsePrefix("10.33.0.0/24")}
	masq := func(n nat.Network) func() error { return func() error { return nat.Masquerade(ctx, host, n) } }
	for _, tc := range []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"nil host", func() error { return nat.Masquerade(ctx, nil, nat.Network{Bridge: "br0", Subnets: p}) }, nil},
		{"zero host", func() error { return nat.Masquerade(ctx, &netns.NS{}, nat.Network{Bridge: "br0", Subnets: p}) }, nil},
		{"long bridge", masq(nat.Network{Bridge: "a-name-longer-than-15", Subnets: p}), nil},
		{"no bridge", masq(nat.Network{Subnets: p}), nil},
		{"no subnets", masq(nat.Network{Bridge: "br0"}), nil},
		{"zero subnet", masq(nat.Network{Bridge: "br0", Subnets: []netip.Prefix{{}}}), nil},
		{"mapped subnet", masq(nat.Network{Bridge: "br0", Subnets: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/120")}}), nil},
		{"internal", masq(nat.Network{Bridge: "br0", Subnets: p, Internal: true}), nat.ErrInternal},
		{"Remove nil host", func() error { return nat.Remove(ctx, nil, "br0") }, nil},
		{"Remove bad bridge", func() error { return nat.Remove(ctx, host, "a/b") }, nil},
		{"Subnets nil host", func() error { _, err := nat.Subnets(ctx, nil, "br0"); return err }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := nstest.Untouched(t, tc.call, host)
			var ve *nsnet.ValidationError
			switch {
			case tc.want == nil && !errors.As(err, &ve):
				t.Errorf("err = %v, want a *nsnet.ValidationError", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestMasqueradeFirst: rules before links. A network's masquerade can be
// set before its bridge exists (and before nsnet's table does).
func TestMasqueradeFirst(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := nat.Network{Bridge: "br-later", Subnets: []netip.Prefix{netip.MustParsePrefix("10.34.0.0/24")}}
	if err := nat.Masquerade(t.Context(), host, n); err != nil {
		t.Fatalf("Masquerade before the bridge and the table: %v", err)
	}
	if got, err := nat.Subnets(t.Context(), host, "br-later"); err != nil || len(got) != 1 {
		t.Errorf("Subnets = %v, %v", got, err)
	}
	if err := nat.Remove(t.Context(), host, "br-later"); err != nil {
		t.Fatal(err)
	}
}
