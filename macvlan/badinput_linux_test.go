package macvlan

import (
	"errors"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestNilAndZero: nil and zero handles, nil hosts and allocators, a
// network deleted behind the caller: typed errors, no panic, nothing
// changed in the host or the container.
func TestNilAndZero(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	topo := nstest.Underlay(t, 1)
	host := topo.Hosts[0].NS
	ctr := nstest.Container(t, host)
	alloc := newAlloc(t)
	gone, err := New(ctx, host, alloc, Config{Name: "gone", Parent: "eth0", Subnets: s10()})
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
	var zero Network
	var nilNet *Network
	for _, tc := range []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"New nil host", func() error { _, err := New(ctx, nil, alloc, Config{Name: "x", Parent: "eth0"}); return err }, nil},
		{"New zero host", func() error { _, err := New(ctx, &netns.NS{}, alloc, Config{Name: "x", Parent: "eth0"}); return err }, nil},
		{"New nil alloc", func() error { _, err := New(ctx, host, nil, Config{Name: "x", Parent: "eth0"}); return err }, nil},
		{"Open nil host", func() error { _, err := Open(ctx, nil, alloc, "x"); return err }, nil},
		{"Open nil alloc", func() error { _, err := Open(ctx, host, nil, "x"); return err }, nil},
		{"List nil host", func() error { _, err := List(ctx, nil, alloc); return err }, nil},
		{"zero Attach", func() error { _, err := zero.Attach(ctx, EndpointConfig{ID: "c", NS: ctr}); return err }, nil},
		{"zero Detach", func() error { return zero.Detach(ctx, "c", ctr) }, nil},
		{"zero Inspect", func() error { _, err := zero.Inspect(ctx); return err }, nil},
		{"zero Delete", func() error { return zero.Delete(ctx, true) }, nil},
		{"zero AddShim", func() error { _, err := zero.AddShim(ctx, ShimConfig{}); return err }, nil},
		{"zero RemoveShim", func() error { return zero.RemoveShim(ctx) }, nil},
		{"nil Attach", func() error { _, err := nilNet.Attach(ctx, EndpointConfig{ID: "c", NS: ctr}); return err }, nil},
		{"nil Delete", func() error { return nilNet.Delete(ctx, true) }, nil},
		{"Attach deleted network", func() error { _, err := gone.Attach(ctx, EndpointConfig{ID: "c", NS: ctr}); return err }, ErrNotFound},
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
