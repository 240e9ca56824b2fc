package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		portmapChild()
		os.Exit(0)
	}
	nstest.Main(m)
}

type world struct {
	host  *netns.NS
	out   *nstest.Outside
	alloc *ipam.Allocator
	mp    *portmap.Mapper
}

func newWorld(t *testing.T) *world {
	t.Helper()
	host := nstest.Host(t)
	w := &world{host: host, out: nstest.NewOutside(t, host), mp: newMapper(t, host, portmap.Config{})}
	w.alloc, _ = ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	t.Cleanup(func() { w.mp.Close() })
	return w
}

// network makes a network with masquerade.
func (w *world) network(t *testing.T, name, subnet string) *bridge.Network {
	t.Helper()
	n, err := bridge.New(t.Context(), w.host, w.alloc, bridge.Config{Name: name,
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix(subnet)}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Delete(context.Background(), true) })
	if err := nat.Masquerade(t.Context(), w.host, nat.Network{Bridge: n.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix(subnet)}}); err != nil {
		t.Fatal(err)
	}
	return n
}

func (w *world) container(t *testing.T, n *bridge.Network, id string) (*netns.NS, netip.Addr) {
	t.Helper()
	ns := nstest.Container(t, w.host)
	e, err := n.Attach(t.Context(), bridge.EndpointConfig{ID: id, NS: ns, DefaultRoute: true})
	if err != nil {
		t.Fatal(err)
	}
	return ns, e.Addrs[0].Addr()
}

func (w *world) publish(t *testing.T, m portmap.Mapping) portmap.Mapping {
	t.Helper()
	got, err := w.mp.Add(t.Context(), m)
	if err != nil {
		t.Fatalf("Add(%s): %v", m, err)
	}
	t.Cleanup(func() { w.mp.Remove(context.Background(), got) })
	return got
}

func reach(t *testing.T, what string, from *netns.NS, network string, to netip.AddrPort) nstest.Reply {
	t.Helper()
	r, err := nstest.Exchange(t.Context(), from, network, to.String(), "x")
	if err != nil {
		t.Errorf("%s: %s: %v", what, to, err)
	}
	return r
}

func noReach(t *testing.T, what string, from *netns.NS, network string, to netip.AddrPort) {
	t.Helper()
	if r, err := nstest.Exchange(t.Context(), from, network, to.String(), "x"); err == nil {
		t.Errorf("%s: %s answered (%+v), want nothing", what, to, r)
	}
}

// TestReachability is S4: a published port is reached from outside
// through the uplink (the service sees the real client), from the host to
// its own addresses and to 127.0.0.1, from a container of the same network
// (its own port too: hairpin) and of another network.
func TestReachability(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.40.0.0/24")
	b := w.network(t, "b", "10.41.0.0/24")
	web, webAddr := w.container(t, a, "web")
	peer, _ := w.container(t, a, "peer")
	other, _ := w.container(t, b, "other")
	for _, proto := range []string{"tcp", "udp"} {
		nstest.Serve(t, web, proto, "0.0.0.0:80")
	}
	uplink := w.out.HostAddr.Addr()
	for _, proto := range []string{"tcp", "udp"} {
		w.publish(t, portmap.Mapping{Proto: proto, HostPort: 8080, CtrAddr: webAddr, CtrPort: 80, ID: "web"})
		at := netip.AddrPortFrom(uplink, 8080)
		r := reach(t, proto+" from outside", w.out.NS, proto, at)
		if r.Peer.Addr() != w.out.Addr {
			t.Errorf("%s: the service saw %s, want the outside client %s", proto, r.Peer, w.out.Addr)
		}
		reach(t, proto+" from the host to its uplink address", w.host, proto, at)
		reach(t, proto+" from the host to 127.0.0.1", w.host, proto, netip.MustParseAddrPort("127.0.0.1:8080"))
		reach(t, proto+" from a container of the same network", peer, proto, at)
		reach(t, proto+" from the container itself (hairpin)", web, proto, at)
		reach(t, proto+" from a container of another network", other, proto, at)
	}

	// Bound to 127.0.0.1: the host reaches it, nobody else.
	w.publish(t, portmap.Mapping{HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: 8081, CtrAddr: webAddr, CtrPort: 80})
	reach(t, "127.0.0.1 mapping from the host", w.host, "tcp", netip.MustParseAddrPort("127.0.0.1:8081"))
	noReach(t, "127.0.0.1 mapping through the uplink", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 8081))

	// Unpublished: nothing reaches it, and nothing is left.
	if err := w.mp.Remove(t.Context(), portmap.Mapping{Proto: "tcp", HostPort: 8080}); err != nil {
		t.Fatal(err)
	}
	noReach(t, "after Remove", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 8080))
	ms, err := w.mp.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Proto == "tcp" && m.HostPort == 8080 {
			t.Errorf("after Remove, List has %s", m)
		}
	}
}

// TestNoDirectAccess: the outside routes the container subnet to the host:
// an unpublished port of a container is not reached that way.
func TestNoDirectAccess(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.42.0.0/24")
	web, webAddr := w.container(t, a, "web")
	nstest.Serve(t, web, "tcp", "0.0.0.0:81")
	h, err := w.out.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if err := addRoute(h, "10.42.0.0/24", w.out.HostAddr.Addr()); err != nil {
		t.Fatal(err)
	}
	noReach(t, "an unpublished port, routed at directly", w.out.NS, "tcp", netip.AddrPortFrom(webAddr, 81))
}

func TestConflictsAndBadInput(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.43.0.0/24")
	_, ctr := w.container(t, a, "c")
	m := w.publish(t, portmap.Mapping{HostPort: 9000, CtrAddr: ctr, CtrPort: 80, ID: "c"})
	if again, err := w.mp.Add(t.Context(), m); err != nil || again != m {
		t.Errorf("the same mapping again: %+v, %v", again, err)
	}
	uplink := w.out.HostAddr.Addr()
	for _, c := range []portmap.Mapping{
		{HostPort: 9000, CtrAddr: ctr, CtrPort: 81, ID: "d"},
		{HostAddr: uplink, HostPort: 9000, CtrAddr: ctr, CtrPort: 80, ID: "d"},
		{HostPort: 8999, HostPortEnd: 9001, CtrAddr: ctr, CtrPort: 80, CtrPortEnd: 82, ID: "d"},
	} {
		if _, err := w.mp.Add(t.Context(), c); !errors.Is(err, portmap.ErrConflict) {
			t.Errorf("Add(%s): %v, want ErrConflict", c, err)
		}
	}
	// Another protocol on the same port is no conflict.
	w.publish(t, portmap.Mapping{Proto: "udp", HostPort: 9000, CtrAddr: ctr, CtrPort: 80})

	// The port is reserved: no program of the host can listen on it.
	if l, err := w.host.Listen("tcp4", "0.0.0.0:9000"); err == nil {
		l.Close()
		t.Error("a program of the host could listen on a published port")
	}
	// A port a program holds cannot be published.
	l, err := w.host.Listen("tcp4", "0.0.0.0:9100")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := w.mp.Add(t.Context(), portmap.Mapping{HostPort: 9100, CtrAddr: ctr, CtrPort: 80}); !errors.Is(err, portmap.ErrPortInUse) {
		t.Errorf("a held port: %v, want ErrPortInUse", err)
	}

	var ve *portmap.ValidationError
	for _, b := range []portmap.Mapping{
		{HostPort: 80, CtrAddr: ctr},                                                           // container port 0
		{HostPort: 70000, CtrAddr: ctr, CtrPort: 80},                                           // over 65535
		{HostPort: 80, HostPortEnd: 82, CtrAddr: ctr, CtrPort: 80},                             // unequal ranges
		{Proto: "icmp", HostPort: 80, CtrAddr: ctr, CtrPort: 80},                               // unknown protocol
		{HostAddr: netip.MustParseAddr("192.0.2.99"), HostPort: 80, CtrAddr: ctr, CtrPort: 80}, // not the host's
		{HostAddr: netip.MustParseAddr("fd00::1"), HostPort: 80, CtrAddr: ctr, CtrPort: 80},    // another family
		{HostPort: 80, CtrPort: 80},                                                            // no container address
	} {
		if _, err := w.mp.Add(t.Context(), b); !errors.As(err, &ve) {
			t.Errorf("Add(%s): %v, want a *ValidationError", b, err)
		}
	}
}

// TestEphemeral is -P: a port from the configured range, returned.
func TestEphemeral(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mp = newMapper(t, w.host, portmap.Config{EphemeralPorts: [2]int{40000, 40001}})
	a := w.network(t, "a", "10.44.0.0/24")
	web, ctr := w.container(t, a, "c")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	got := map[int]bool{}
	for range 2 {
		m := w.publish(t, portmap.Mapping{CtrAddr: ctr, CtrPort: 80})
		if m.HostPort < 40000 || m.HostPort > 40001 || got[m.HostPort] {
			t.Fatalf("ephemeral port %d", m.HostPort)
		}
		got[m.HostPort] = true
		reach(t, "an ephemeral port", w.out.NS, "tcp", netip.AddrPortFrom(w.out.HostAddr.Addr(), uint16(m.HostPort)))
	}
	if _, err := w.mp.Add(t.Context(), portmap.Mapping{CtrAddr: ctr, CtrPort: 80}); !errors.Is(err, portmap.ErrExhausted) {
		t.Errorf("a third ephemeral port from two: %v", err)
	}
}

// TestConfigAndNil: a bad ephemeral range is refused by New (a reversed
// one used to panic in Add, one past 65535 to publish a wrapped, low port),
// and a nil or zero Mapper answers with an error, not a panic.
func TestConfigAndNil(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	var ve *portmap.ValidationError
	for _, r := range [][2]int{{60999, 32768}, {65530, 70009}, {0, 100}, {-5, 10}} {
		mp, err := portmap.New(host, portmap.Config{EphemeralPorts: r})
		if !errors.As(err, &ve) {
			t.Errorf("New with EphemeralPorts %v: %v, want a *ValidationError", r, err)
		}
		if mp != nil {
			mp.Close()
		}
	}
	if _, err := portmap.New(nil, portmap.Config{}); !errors.As(err, &ve) {
		t.Errorf("New(nil): %v, want a *ValidationError", err)
	}
	m := portmap.Mapping{HostPort: 8080, CtrAddr: netip.MustParseAddr("10.0.0.2"), CtrPort: 80}
	for _, mp := range []*portmap.Mapper{nil, {}} {
		if _, err := mp.Add(t.Context(), m); !errors.Is(err, portmap.ErrNoMapper) {
			t.Errorf("Add on %v: %v", mp, err)
		}
		if err := mp.Remove(t.Context(), m); !errors.Is(err, portmap.ErrNoMapper) {
			t.Errorf("Remove on %v: %v", mp, err)
		}
		if _, err := mp.List(t.Context()); !errors.Is(err, portmap.ErrNoMapper) {
			t.Errorf("List on %v: %v", mp, err)
		}
		if err := mp.Reserve(m); !errors.Is(err, portmap.ErrNoMapper) {
			t.Errorf("Reserve on %v: %v", mp, err)
		}
		if err := mp.Close(); !errors.Is(err, portmap.ErrNoMapper) {
			t.Errorf("Close on %v: %v", mp, err)
		}
	}
}
