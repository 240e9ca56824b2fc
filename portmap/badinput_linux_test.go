package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

// TestBadInputTable: every bad value class gets a *nsnet.ValidationError
// (or the sentinel named), without a panic and without a change to the
// host: no rule, no reservation, no sysctl.
func TestBadInputTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t)
	n := w.network(t, "a", "10.44.0.0/24")
	_, ctr := w.container(t, n, "c")
	w.publish(t, portmap.Mapping{HostPort: 9000, CtrAddr: ctr, CtrPort: 80, ID: "c"})
	add := func(m portmap.Mapping) func() error {
		return func() error { _, err := w.mp.Add(ctx, m); return err }
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"New nil host", func() error { _, err := portmap.New(nil, portmap.Config{}); return err }, nil},
		{"New reversed range", func() error {
			_, err := portmap.New(w.host, portmap.Config{EphemeralPorts: [2]int{60999, 32768}})
			return err
		}, nil},
		{"New range past 65535", func() error {
			_, err := portmap.New(w.host, portmap.Config{EphemeralPorts: [2]int{65530, 70009}})
			return err
		}, nil},
		{"bad proto", add(portmap.Mapping{Proto: "icmp", HostPort: 9001, CtrAddr: ctr, CtrPort: 80}), nil},
		{"no container address", add(portmap.Mapping{HostPort: 9001, CtrPort: 80}), nil},
		{"multicast container", add(portmap.Mapping{HostPort: 9001, CtrAddr: netip.MustParseAddr("224.0.0.1"), CtrPort: 80}), nil},
		{"port past 65535", add(portmap.Mapping{HostPort: 70000, CtrAddr: ctr, CtrPort: 80}), nil},
		{"negative port", add(portmap.Mapping{HostPort: -1, CtrAddr: ctr, CtrPort: 80}), nil},
		{"container port 0", add(portmap.Mapping{HostPort: 9001, CtrAddr: ctr}), nil},
		{"reversed range", add(portmap.Mapping{HostPort: 9005, HostPortEnd: 9001, CtrAddr: ctr, CtrPort: 80, CtrPortEnd: 76}), nil},
		{"ranges of other lengths", add(portmap.Mapping{HostPort: 9001, HostPortEnd: 9003, CtrAddr: ctr, CtrPort: 80, CtrPortEnd: 81}), nil},
		{"family mismatch", add(portmap.Mapping{HostAddr: netip.MustParseAddr("::1"), HostPort: 9001, CtrAddr: ctr, CtrPort: 80}), nil},
		{"not the host's address", add(portmap.Mapping{HostAddr: netip.MustParseAddr("192.0.2.9"), HostPort: 9001, CtrAddr: ctr, CtrPort: 80}), nil},
		{"NUL in ID", add(portmap.Mapping{HostPort: 9001, CtrAddr: ctr, CtrPort: 80, ID: "a\x00"}), nil},
		{"taken", add(portmap.Mapping{HostPort: 9000, CtrAddr: ctr, CtrPort: 81, ID: "d"}), portmap.ErrConflict},
		{"cancelled", func() error {
			_, err := w.mp.Add(cancelled, portmap.Mapping{HostPort: 9001, CtrAddr: ctr, CtrPort: 80})
			return err
		}, context.Canceled},
		{"batch with one bad", func() error {
			_, err := w.mp.AddAll(ctx, []portmap.Mapping{{HostPort: 9002, CtrAddr: ctr, CtrPort: 80}, {HostPort: 9000, CtrAddr: ctr, CtrPort: 82}})
			return err
		}, portmap.ErrConflict},
		{"RemoveOwner empty", func() error { return w.mp.RemoveOwner(ctx, "") }, nil},
		{"nil Mapper", func() error { var mp *portmap.Mapper; _, err := mp.Add(ctx, portmap.Mapping{}); return err }, nil},
		{"GC nil Mapper", func() error { var mp *portmap.Mapper; _, err := mp.GC(ctx, nil); return err }, portmap.ErrNoMapper},
		{"GC zero Mapper", func() error { _, err := (&portmap.Mapper{}).GC(ctx, nil); return err }, portmap.ErrNoMapper},
		{"GC nil context", func() error {
			var nilCtx context.Context
			_, err := w.mp.GC(nilCtx, []string{"c"})
			return err
		}, nil},
		{"GC cancelled", func() error { _, err := w.mp.GC(cancelled, nil); return err }, context.Canceled},
		{"Reconcile nil host", func() error { return portmap.Reconcile(ctx, nil, portmap.State{}) }, nil},
		{"Reconcile zero host", func() error { return portmap.Reconcile(ctx, &netns.NS{}, portmap.State{}) }, nil},
		{"Reconcile bad bridge", func() error {
			return portmap.Reconcile(ctx, w.host, portmap.State{Networks: []portmap.Network{{Bridge: "a/b"}}})
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := nstest.Untouched(t, tc.call, w.host)
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
