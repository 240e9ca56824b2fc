package nat_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// network makes a bridge network in host with one container attached.
func network(t *testing.T, host *netns.NS, name, subnet string, internal bool) (*bridge.Network, *netns.NS, bridge.Endpoint) {
	t.Helper()
	alloc, _ := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	n, err := bridge.New(t.Context(), host, alloc, bridge.Config{Name: name, Internal: internal,
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(subnet)}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Delete(context.Background(), true) })
	ctr := nstest.Container(t, host)
	e, err := n.Attach(t.Context(), bridge.EndpointConfig{ID: "c-" + name, NS: ctr, DefaultRoute: true})
	if err != nil {
		t.Fatal(err)
	}
	return n, ctr, e
}

// TestMasquerade is S3: with masquerade, a container reaches a server
// outside, which sees the host's uplink address; without, it does not
// (the outside has no route to the container's subnet).
func TestMasquerade(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	n, ctr, _ := network(t, host, "egress", "10.30.0.0/24", false)
	srv := nstest.Serve(t, out.NS, "tcp", "0.0.0.0:7000")
	dst := netip.AddrPortFrom(out.Addr, srv.Addr.Port()).String()
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.Exchange(t.Context(), ctr, "tcp", dst, "x"); err == nil {
		t.Fatal("reached the outside without masquerade: the test cannot show anything")
	}

	nw := nat.Network{Bridge: n.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("10.30.0.0/24")}}
	for range 2 {
		if err := nat.Masquerade(t.Context(), host, nw); err != nil {
			t.Fatal(err)
		}
	}
	r, err := nstest.Exchange(t.Context(), ctr, "tcp", dst, "x")
	if err != nil {
		t.Fatalf("egress with masquerade: %v", err)
	}
	if r.Peer.Addr() != out.HostAddr.Addr() {
		t.Errorf("the outside saw %s, want the host's uplink address %s", r.Peer.Addr(), out.HostAddr.Addr())
	}
	if got, _ := nat.Subnets(t.Context(), host, nw.Bridge); len(got) != 1 || got[0] != nw.Subnets[0] {
		t.Errorf("Subnets: %v", got)
	}
	// Other subnets replace the old ones; back again, egress works as before.
	other := nw
	other.Subnets = []netip.Prefix{netip.MustParsePrefix("10.39.0.0/24")}
	if err := nat.Masquerade(t.Context(), host, other); err != nil {
		t.Fatal(err)
	}
	if got, _ := nat.Subnets(t.Context(), host, nw.Bridge); len(got) != 1 || got[0] != other.Subnets[0] {
		t.Errorf("Subnets after replacing: %v", got)
	}
	if _, err := nstest.Exchange(t.Context(), ctr, "tcp", dst, "x"); err == nil {
		t.Error("egress for a subnet no longer masqueraded")
	}
	if err := nat.Masquerade(t.Context(), host, nw); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.Exchange(t.Context(), ctr, "tcp", dst, "x"); err != nil {
		t.Errorf("egress after masquerading the subnet again: %v", err)
	}

	if err := nat.Remove(t.Context(), host, nw.Bridge); err != nil {
		t.Fatal(err)
	}
	if err := nat.Remove(t.Context(), host, nw.Bridge); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := nstest.Exchange(t.Context(), ctr, "tcp", dst, "x"); err == nil {
		t.Error("egress after Remove")
	}
	if got, _ := nat.Subnets(t.Context(), host, nw.Bridge); len(got) != 0 {
		t.Errorf("Subnets after Remove: %v", got)
	}
}

// TestRemoveExactly: removing one network's masquerade leaves another's.
func TestRemoveExactly(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	a, ca, _ := network(t, host, "a", "10.31.0.0/24", false)
	b, cb, _ := network(t, host, "b", "10.32.0.0/24", false)
	for _, n := range []*bridge.Network{a, b} {
		cfg := n.Config()
		if err := nat.Masquerade(t.Context(), host, nat.Network{Bridge: cfg.Bridge, Subnets: []netip.Prefix{cfg.Subnets[0].Subnet}}); err != nil {
			t.Fatal(err)
		}
	}
	srv := nstest.Serve(t, out.NS, "udp", "0.0.0.0:7001")
	dst := netip.AddrPortFrom(out.Addr, srv.Addr.Port()).String()
	if err := nat.Remove(t.Context(), host, a.Config().Bridge); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.Exchange(t.Context(), ca, "udp", dst, "x"); err == nil {
		t.Error("a still has egress")
	}
	if _, err := nstest.Exchange(t.Context(), cb, "udp", dst, "x"); err != nil {
		t.Errorf("b lost its egress: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	host := nstest.Host(t)
	p := []netip.Prefix{netip.MustParsePrefix("10.33.0.0/24")}
	var ve *nat.ValidationError
	for _, n := range []nat.Network{
		{Bridge: "a-name-longer-than-15", Subnets: p},
		{Bridge: "br0"},
		{Bridge: "br0", Subnets: []netip.Prefix{{}}},
	} {
		if err := nat.Masquerade(t.Context(), host, n); !errors.As(err, &ve) {
			t.Errorf("Masquerade(%+v): %v, want a *ValidationError", n, err)
		}
	}
	if err := nat.Masquerade(t.Context(), host, nat.Network{Bridge: "br0", Subnets: p, Internal: true}); !errors.Is(err, nat.ErrInternal) {
		t.Errorf("internal: %v", err)
	}
}
