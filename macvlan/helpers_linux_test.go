package macvlan

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	nstest.Main(m)
}

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// s10 is the subnet of scenario S10.
func s10() []ipam.SubnetConfig {
	return []ipam.SubnetConfig{{Subnet: prefix("172.29.0.0/16"), Gateway: addr("172.29.0.254")}}
}

// newAlloc returns an allocator on a memory store: one per host, as S10
// has no shared IPAM.
func newAlloc(t testing.TB) *ipam.Allocator {
	t.Helper()
	a, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newNet creates a network and deletes it (forcibly) at cleanup.
func newNet(t testing.TB, host *netns.NS, alloc *ipam.Allocator, cfg Config) *Network {
	t.Helper()
	n, err := New(context.Background(), host, alloc, cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		if err := n.Delete(context.Background(), true); err != nil {
			t.Errorf("Delete(%s): %v", cfg.Name, err)
		}
	})
	return n
}

// attach attaches a new container with a static address.
func attach(t testing.TB, n *Network, id, a string) (*netns.NS, Endpoint) {
	t.Helper()
	ctr := nstest.Container(t, n.Host())
	ep := EndpointConfig{ID: id, NS: ctr, DefaultRoute: true}
	if a != "" {
		ep.Addrs = []netip.Addr{addr(a)}
	}
	e, err := n.Attach(context.Background(), ep)
	if err != nil {
		t.Fatalf("Attach(%s): %v", id, err)
	}
	return ctr, e
}

func mustPing(t testing.TB, what string, from *netns.NS, to netip.Addr) {
	t.Helper()
	if err := nstest.Ping(context.Background(), from, to); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func mustNotPing(t testing.TB, what string, from *netns.NS, to netip.Addr) {
	t.Helper()
	if err := nstest.Ping(context.Background(), from, to); err == nil {
		t.Errorf("%s: got a reply, want none", what)
	}
}

// mustTCP runs an echo server in to and talks to it from from over TCP;
// the server must see from's address wantPeer (no NAT).
func mustTCP(t testing.TB, what string, from, to *netns.NS, toAddr, wantPeer netip.Addr) {
	t.Helper()
	srv := nstest.Serve(t, to, "tcp4", netip.AddrPortFrom(toAddr, 0).String())
	defer srv.Close()
	r, err := nstest.Exchange(context.Background(), from, "tcp4", srv.Addr.String(), "hello")
	if err != nil {
		t.Errorf("%s: TCP to %s: %v", what, srv.Addr, err)
		return
	}
	if r.Data != "hello" || r.Peer.Addr() != wantPeer {
		t.Errorf("%s: reply %q from peer %s, want hello from %s", what, r.Data, r.Peer, wantPeer)
	}
}

// linkNames returns the names of the links of ns.
func linkNames(t testing.TB, ns *netns.NS) []string { return nstest.LinkNames(t, ns) }

// hostRoute adds a route in ns to dst on link name, at metric 500, and
// removes it at cleanup.
func hostRoute(t testing.TB, ns *netns.NS, name string, dst netip.Prefix) {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet.From(dst), Scope: netlink.SCOPE_LINK, Priority: 500}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("route %s dev %s: %v", dst, name, err)
	}
	t.Cleanup(func() { h.RouteDel(r) })
}
