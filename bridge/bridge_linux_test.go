package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		restartChild()
		return
	}
	if mode := os.Getenv(lifecycleEnv); mode != "" {
		lifecycleChild(mode)
		return
	}
	nstest.Main(m)
}

var addr = netip.MustParseAddr

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

// attach attaches a new container and returns its namespace and endpoint.
func attach(t testing.TB, n *Network, id string, ep EndpointConfig) (*netns.NS, Endpoint) {
	t.Helper()
	if ep.NS == nil {
		ep.NS = nstest.Container(t, n.Host())
	}
	ep.ID = id
	e, err := n.Attach(context.Background(), ep)
	if err != nil {
		t.Fatalf("Attach(%s): %v", id, err)
	}
	return ep.NS, e
}

func ping(t testing.TB, from *netns.NS, to netip.Addr) error {
	t.Helper()
	return nstest.Ping(context.Background(), from, to)
}

func mustPing(t testing.TB, what string, from *netns.NS, to netip.Addr) {
	t.Helper()
	if err := ping(t, from, to); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func mustNotPing(t testing.TB, what string, from *netns.NS, to netip.Addr) {
	t.Helper()
	if err := ping(t, from, to); err == nil {
		t.Errorf("%s: got a reply, want none", what)
	}
}

func TestNewNetwork(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "mynet", Labels: map[string]string{"app": "web"}})
	cfg := n.Config()
	if cfg.Bridge != BridgeName("mynet") || !strings.HasPrefix(cfg.Bridge, "br-") || len(cfg.Bridge) != 15 {
		t.Errorf("bridge name %q", cfg.Bridge)
	}
	if len(cfg.Subnets) != 1 || cfg.Subnets[0].Subnet != netip.MustParsePrefix("172.17.0.0/16") || cfg.Subnets[0].Gateway != addr("172.17.0.1") {
		t.Errorf("auto subnets %+v, want 172.17.0.0/16 gw 172.17.0.1", cfg.Subnets)
	}
	if cfg.MTU != 1500 {
		t.Errorf("MTU %d, want 1500 (the host has no default route)", cfg.MTU)
	}
	h, _ := host.Netlink()
	l, err := h.LinkByName(cfg.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "bridge" || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().HardwareAddr.String() != cfg.MAC.String() {
		t.Errorf("bridge %s: type %s flags %v MAC %v (want %v)", cfg.Bridge, l.Type(), l.Attrs().Flags, l.Attrs().HardwareAddr, cfg.MAC)
	}
	if v, _ := host.Sysctl("net/ipv6/conf/" + cfg.Bridge + "/accept_ra"); v != "0" {
		t.Errorf("bridge accept_ra = %q", v)
	}

	// Idempotent: same settings give the same network; others, ErrExists.
	again, err := New(t.Context(), host, alloc, Config{Name: "mynet", Labels: map[string]string{"app": "web"}})
	if err != nil || again.Config().Subnets[0].Subnet != cfg.Subnets[0].Subnet || again.index != n.index {
		t.Fatalf("New again: %+v, %v", again, err)
	}
	if _, err := New(t.Context(), host, alloc, Config{Name: "mynet", Internal: true}); !errors.Is(err, ErrExists) || !errors.Is(err, os.ErrExist) {
		t.Fatalf("New with other settings: %v, want ErrExists", err)
	}
	info, err := n.Inspect(t.Context())
	if err != nil || info.Name != "mynet" || info.Labels["app"] != "web" || len(info.Endpoints) != 0 {
		t.Fatalf("Inspect: %+v, %v", info, err)
	}
}

func TestNewNetworkMTUAndMAC(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	h, _ := host.Netlink()
	up, _ := h.LinkByName(out.HostLink)
	if err := h.LinkSetMTU(up, 1400); err != nil {
		t.Fatal(err)
	}
	mac := net.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0, 1}
	n := newNet(t, host, newAlloc(t), Config{Name: "mtu", MAC: mac})
	if n.Config().MTU != 1400 {
		t.Errorf("MTU %d, want 1400 (the default-route link's)", n.Config().MTU)
	}
	// The MAC stays pinned as ports come and go.
	_, e := attach(t, n, "c1", EndpointConfig{})
	if e.MAC.String() == mac.String() {
		t.Fatal("container got the bridge's MAC")
	}
	if err := n.Detach(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName(n.Config().Bridge)
	if l.Attrs().HardwareAddr.String() != mac.String() || l.Attrs().MTU != 1400 {
		t.Errorf("bridge MAC %v MTU %d after a port came and went; want %v 1400", l.Attrs().HardwareAddr, l.Attrs().MTU, mac)
	}
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{}, "Config.Name"},
		{Config{Name: "x", Bridge: "a-name-longer-than-15"}, "Config.Bridge"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.1/16")}}}, "Config.Subnets[0]"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.0/16"), Gateway: addr("172.21.0.1")}}}, "Config.Subnets[0]"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.0/16"), Gateway: addr("172.20.255.255")}}}, "Config.Subnets[0]"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.0/16"), IPRange: p("172.21.0.0/24")}}}, "Config.Subnets[0]"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.0/31")}}}, "Config.Subnets[0]"},
		{Config{Name: "x", Subnets: []ipam.SubnetConfig{{Subnet: p("172.20.0.0/16")}, {Subnet: p("172.20.1.0/24")}}}, "Config.Subnets[1]"},
		{Config{Name: "x", MTU: 10}, "Config.MTU"},
		{Config{Name: "x", MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}}, "Config.MAC"},
		{Config{Name: "x", Labels: map[string]string{"k": strings.Repeat("v", 300)}}, "Config.Labels"},
	} {
		var ve *netns.ValidationError
		if _, err := New(t.Context(), nil, nil, tc.cfg); !errors.As(err, &ve) || !strings.HasPrefix(ve.Field, tc.field) {
			t.Errorf("New(%+v): %v, want a ValidationError on %s", tc.cfg, err, tc.field)
		}
	}
	for _, ep := range []EndpointConfig{
		{},
		{ID: "c1"},
		{ID: "c/1", NS: &netns.NS{}},
		{ID: strings.Repeat("c", 81), NS: &netns.NS{}},
		{ID: "c1", NS: &netns.NS{}, IfName: "bad/name"},
		{ID: "c1", NS: &netns.NS{}, MAC: net.HardwareAddr{1, 0, 0, 0, 0, 0}},
		{ID: "c1", NS: &netns.NS{}, Addrs: []netip.Addr{{}}},
	} {
		var ve *netns.ValidationError
		if err := ep.Validate(); !errors.As(err, &ve) {
			t.Errorf("Validate(%+v): %v, want a ValidationError", ep, err)
		}
	}
}

func TestOverlapAndTakenName(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	newNet(t, host, alloc, Config{Name: "a", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.20.0.0/16")}}})
	if _, err := New(t.Context(), host, alloc, Config{Name: "b", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.20.5.0/24")}}}); !errors.Is(err, ErrOverlap) {
		t.Fatalf("overlapping subnet: %v, want ErrOverlap", err)
	}
	// A bridge name taken by a link that is not nsnet's.
	h, _ := host.Netlink()
	name := nstest.Name(t, "br")
	foreign := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(foreign); err != nil {
		t.Fatal(err)
	}
	defer h.LinkDel(foreign)
	if _, err := New(t.Context(), host, alloc, Config{Name: "c", Bridge: name}); !errors.Is(err, ErrExists) {
		t.Fatalf("taken bridge name: %v, want ErrExists", err)
	}
	if got := nstest.LinkNames(t, host); len(got) != 3 {
		t.Fatalf("links after refused networks: %v", got)
	}
}

// TestDefaultBridge is S2: docker0, 172.17.0.0/16, three containers.
func TestDefaultBridge(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNet(t, host, newAlloc(t), Config{Name: "bridge", Bridge: "docker0",
		Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: addr("172.17.0.1")}}})
	var ctrs []*netns.NS
	for i := range 3 {
		ctr, e := attach(t, n, fmt.Sprintf("c%d", i+1), EndpointConfig{DefaultRoute: true})
		want := netip.PrefixFrom(addr(fmt.Sprintf("172.17.0.%d", i+2)), 16)
		if len(e.Addrs) != 1 || e.Addrs[0] != want || e.IfName != "eth0" {
			t.Fatalf("container %d: %+v, want eth0 %s", i+1, e, want)
		}
		// eth0@ifNN: the container end's peer is the host veth, a port of docker0.
		ch, _ := ctr.Netlink()
		eth0, err := ch.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		hh, _ := host.Netlink()
		hv, err := hh.LinkByName(e.HostVeth)
		if err != nil || eth0.Attrs().ParentIndex != hv.Attrs().Index || hv.Attrs().MasterIndex != n.index {
			t.Fatalf("eth0@if%d, host veth %v (master %d), bridge %d: %v", eth0.Attrs().ParentIndex, hv.Attrs().Index, hv.Attrs().MasterIndex, n.index, err)
		}
		if v, _ := ctr.Sysctl("net/ipv6/conf/eth0/accept_ra"); v != "0" {
			t.Errorf("container accept_ra = %q", v)
		}
		if v, _ := ctr.Sysctl("net/ipv4/conf/eth0/arp_notify"); v != "1" {
			t.Errorf("container arp_notify = %q", v)
		}
		routes, _ := ctr.Routes(netlink.FAMILY_V4)
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isDefault(r) && r.Gw.Equal(net.ParseIP("172.17.0.1")) }) {
			t.Errorf("container %d has no default route via 172.17.0.1: %v", i+1, routes)
		}
		ctrs = append(ctrs, ctr)
	}
	for i, c := range ctrs {
		mustPing(t, fmt.Sprintf("c%d to the gateway", i+1), c, addr("172.17.0.1"))
		for j := range ctrs {
			if i != j {
				mustPing(t, fmt.Sprintf("c%d to c%d", i+1, j+1), c, addr(fmt.Sprintf("172.17.0.%d", j+2)))
			}
		}
	}
	srv := nstest.Serve(t, ctrs[2], "tcp", "0.0.0.0:80")
	r, err := nstest.Exchange(t.Context(), ctrs[0], "tcp", "172.17.0.4:80", "hi")
	if err != nil || r.Peer.Addr() != addr("172.17.0.2") {
		t.Fatalf("TCP c1 to c3: %+v, %v", r, err)
	}
	srv.Close()

	// brctl show / docker network inspect.
	info, err := n.Inspect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Endpoints) != 3 {
		t.Fatalf("Inspect: %d endpoints", len(info.Endpoints))
	}
	for i, e := range info.Endpoints {
		if e.ID != fmt.Sprintf("c%d", i+1) || e.IfName != "eth0" || len(e.Addrs) != 1 || e.MAC == nil || !e.DefaultRoute {
			t.Errorf("endpoint %d: %+v", i, e)
		}
	}
	all, err := List(t.Context(), host, n.alloc)
	if err != nil || len(all) != 1 || all[0].Bridge != "docker0" {
		t.Fatalf("List: %+v, %v", all, err)
	}
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
