package veth_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
)

// TestBadInputTable: every bad value class gets a *nsnet.ValidationError
// (or the sentinel named), without a panic and without a change to either
// namespace.
func TestBadInputTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	if _, err := veth.Pair(ctx, host, veth.Config{Name: "taken0", Peer: veth.End{Name: "taken1"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.Delete(context.Background(), host, "taken0") })
	pair := func(cfg veth.Config) func() error {
		return func() error { _, err := veth.Pair(ctx, host, cfg); return err }
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"nil ns", func() error { _, err := veth.Pair(ctx, nil, veth.Config{}); return err }, nil},
		{"zero ns", func() error { _, err := veth.Pair(ctx, &netns.NS{}, veth.Config{}); return err }, nil},
		{"zero peer ns", pair(veth.Config{Peer: veth.End{NS: &netns.NS{}}}), nil},
		{"long name", pair(veth.Config{Name: strings.Repeat("v", 16)}), nil},
		{"slash", pair(veth.Config{Name: "a/b"}), nil},
		{"space", pair(veth.Config{Name: "a b"}), nil},
		{"dot", pair(veth.Config{Name: "."}), nil},
		{"same names", pair(veth.Config{Name: "v0", Peer: veth.End{Name: "v0"}}), nil},
		{"MTU low", pair(veth.Config{MTU: 67}), nil},
		{"MTU high", pair(veth.Config{MTU: 65536}), nil},
		{"MTU negative", pair(veth.Config{MTU: -1}), nil},
		{"multicast MAC", pair(veth.Config{MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}}), nil},
		{"zero MAC", pair(veth.Config{MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}}), nil},
		{"short MAC", pair(veth.Config{Peer: veth.End{MAC: net.HardwareAddr{2}}}), nil},
		{"long alias", pair(veth.Config{Alias: strings.Repeat("a", 256)}), nil},
		{"name taken", pair(veth.Config{Name: "taken0", Peer: veth.End{NS: ctr, Name: "eth0"}}), netns.ErrExists},
		{"Delete nil ns", func() error { return veth.Delete(ctx, nil, "taken0") }, nil},
		{"Delete bad name", func() error { return veth.Delete(ctx, host, "a/b") }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := nstest.Untouched(t, tc.call, host, ctr)
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
