package bridge_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestBadInputTable: every bad value class gets a *nsnet.ValidationError
// (or the sentinel named), without a panic, and the host, the container
// and the IPAM store are exactly as before.
func TestBadInputTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	nstest.NewOutside(t, host) // the host's uplink: a route to 198.51.100.0/24
	store := ipam.NewMemoryStore()
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	nw, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "good", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.77.0.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nw.Delete(context.Background(), true) })
	if _, err := nw.Attach(ctx, bridge.EndpointConfig{ID: "c1", NS: nstest.Container(t, host)}); err != nil {
		t.Fatal(err)
	}
	gone, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
	sub := func(s string) []ipam.SubnetConfig { return []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(s)}} }
	newNet := func(cfg bridge.Config) func() error {
		return func() error { _, err := bridge.New(ctx, host, alloc, cfg); return err }
	}
	attach := func(ep bridge.EndpointConfig) func() error {
		return func() error { _, err := nw.Attach(ctx, ep); return err }
	}
	var zero bridge.Network
	var nilNet *bridge.Network
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	cases := []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"New nil host", func() error { _, err := bridge.New(ctx, nil, alloc, bridge.Config{Name: "x"}); return err }, nil},
		{"New zero host", func() error { _, err := bridge.New(ctx, &netns.NS{}, alloc, bridge.Config{Name: "x"}); return err }, nil},
		{"New nil alloc", func() error { _, err := bridge.New(ctx, host, nil, bridge.Config{Name: "x"}); return err }, nil},
		{"New empty name", newNet(bridge.Config{}), nil},
		{"New bad name", newNet(bridge.Config{Name: "a/b"}), nil},
		{"New long bridge", newNet(bridge.Config{Name: "x", Bridge: strings.Repeat("b", 16)}), nil},
		{"New loopback subnet", newNet(bridge.Config{Name: "x", Subnets: sub("127.0.0.0/8")}), nil},
		{"New multicast subnet", newNet(bridge.Config{Name: "x", Subnets: sub("224.1.0.0/16")}), nil},
		{"New ::/0", newNet(bridge.Config{Name: "x", Subnets: sub("::/0")}), nil},
		{"New MTU", newNet(bridge.Config{Name: "x", MTU: 70000}), nil},
		{"New multicast MAC", newNet(bridge.Config{Name: "x", MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}), nil},
		{"New over a host route", newNet(bridge.Config{Name: "x", Subnets: sub("198.51.100.0/25")}), nil},
		{"New overlap", newNet(bridge.Config{Name: "x", Subnets: sub("10.77.0.128/25")}), ipam.ErrOverlap},
		{"New other settings", newNet(bridge.Config{Name: "good", Internal: true}), bridge.ErrExists},
		{"New cancelled", func() error { _, err := bridge.New(cancelled, host, alloc, bridge.Config{Name: "x"}); return err }, context.Canceled},
		{"Open nil host", func() error { _, err := bridge.Open(ctx, nil, alloc, "good"); return err }, nil},
		{"Open nil alloc", func() error { _, err := bridge.Open(ctx, host, nil, "good"); return err }, nil},
		{"Open missing", func() error { _, err := bridge.Open(ctx, host, alloc, "nope"); return err }, bridge.ErrNotFound},
		{"List nil host", func() error { _, err := bridge.List(ctx, nil, alloc); return err }, nil},
		{"None nil", func() error { return bridge.None(ctx, nil) }, nil},
		{"HostMode nil", func() error { _, err := bridge.HostMode(nil); return err }, nil},
		{"Join nil", func() error { _, err := bridge.Join(nil); return err }, nil},
		{"Attach no ID", attach(bridge.EndpointConfig{NS: ctr}), nil},
		{"Attach bad ID", attach(bridge.EndpointConfig{ID: "a b", NS: ctr}), nil},
		{"Attach nil NS", attach(bridge.EndpointConfig{ID: "x"}), nil},
		{"Attach zero NS", attach(bridge.EndpointConfig{ID: "x", NS: &netns.NS{}}), nil},
		{"Attach long IfName", attach(bridge.EndpointConfig{ID: "x", NS: ctr, IfName: strings.Repeat("e", 16)}), nil},
		{"Attach bad MAC", attach(bridge.EndpointConfig{ID: "x", NS: ctr, MAC: net.HardwareAddr{1}}), nil},
		{"Attach bad priority", attach(bridge.EndpointConfig{ID: "x", NS: ctr, GatewayPriority: 1 << 20}), nil},
		{"Attach zero addr", attach(bridge.EndpointConfig{ID: "x", NS: ctr, Addrs: []netip.Addr{{}}}), nil},
		{"Attach static outside", attach(bridge.EndpointConfig{ID: "x", NS: ctr, Addrs: []netip.Addr{netip.MustParseAddr("10.78.0.5")}}), nil},
		{"Attach host", attach(bridge.EndpointConfig{ID: "x", NS: host}), bridge.ErrHostMode},
		{"Attach deleted network", func() error { _, err := gone.Attach(ctx, bridge.EndpointConfig{ID: "x", NS: ctr}); return err }, bridge.ErrNotFound},
		{"Attach cancelled", func() error { _, err := nw.Attach(cancelled, bridge.EndpointConfig{ID: "x", NS: ctr}); return err }, context.Canceled},
		{"Delete in use", func() error { return nw.Delete(ctx, false) }, nsnet.ErrInUse},
		{"zero Attach", func() error { _, err := zero.Attach(ctx, bridge.EndpointConfig{ID: "x", NS: ctr}); return err }, nil},
		{"zero Detach", func() error { return zero.Detach(ctx, "x") }, nil},
		{"zero Inspect", func() error { _, err := zero.Inspect(ctx); return err }, nil},
		{"zero Delete", func() error { return zero.Delete(ctx, true) }, nil},
		{"nil Attach", func() error { _, err := nilNet.Attach(ctx, bridge.EndpointConfig{ID: "x", NS: ctr}); return err }, nil},
		{"nil Delete", func() error { return nilNet.Delete(ctx, true) }, nil},
	}
	// Opting in takes a subnet over a host route.
	over, err := bridge.New(ctx, host, alloc, bridge.Config{Name: "over", Subnets: sub("198.51.100.128/25"), AllowRouteOverlap: true})
	if err != nil {
		t.Fatalf("New over a host route, allowed: %v", err)
	}
	if err := over.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			storeBefore := dumpStore(t, store)
			err := nstest.Untouched(t, tc.call, host, ctr)
			var ve *nsnet.ValidationError
			switch {
			case tc.want == nil && !errors.As(err, &ve):
				t.Errorf("err = %v, want a *nsnet.ValidationError", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if after := dumpStore(t, store); after != storeBefore {
				t.Errorf("the IPAM store changed:\n%s\n--- after:\n%s", storeBefore, after)
			}
		})
	}
}

func dumpStore(t *testing.T, s ipam.Store) string {
	t.Helper()
	kvs, _, err := s.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range kvs {
		b.WriteString(kv.Key + "=" + string(kv.Value) + "\n")
	}
	return b.String()
}
