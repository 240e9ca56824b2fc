package stack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/nsnet/nsnet/stack"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	nstest.Main(m)
}

func open(t *testing.T, host *netns.NS, dir string) *stack.Stack {
	t.Helper()
	s, err := stack.Open(t.Context(), host, stack.Config{StateDir: dir, Upstreams: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// lookup asks the DNS server at ns's nameserver for name, from inside ns.
func lookup(t *testing.T, ns *netns.NS, server netip.Addr, name string) ([]netip.Addr, error) {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return ns.Dial(ctx, nil, network, netip.AddrPortFrom(server, 53).String())
	}}
	return r.LookupNetIP(t.Context(), "ip4", name)
}

func mustResolve(t *testing.T, ns *netns.NS, server netip.Addr, name string, want netip.Addr) {
	t.Helper()
	got, err := lookup(t, ns, server, name)
	if err != nil || len(got) != 1 || got[0] != want {
		t.Errorf("%s resolves to %v, %v; want %s", name, got, err, want)
	}
}

// TestDockerDay: the life of a runtime's host: a network, two containers
// with names and a published port, a restart of the process, a firewall
// reload, then everything down; with real traffic at each step.
func TestDockerDay(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	dir := filepath.Join(t.TempDir(), "state")
	s := open(t, host, dir)

	nw, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "app"}); err != nil || again.Bridge != nw.Bridge {
		t.Fatalf("CreateNetwork again: %+v, %v", again, err)
	}
	if _, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "app", Internal: true}); !errors.Is(err, stack.ErrExists) {
		t.Fatalf("CreateNetwork with other settings: %v, want ErrExists", err)
	}
	web, db := nstest.Container(t, host), nstest.Container(t, host)
	srv := nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	_ = srv
	cw, err := s.Run(ctx, stack.ContainerConfig{ID: "web", NS: web,
		Networks: []stack.Attachment{{Network: "app", Aliases: []string{"www"}}},
		Ports:    []portmap.Mapping{{HostPort: 8080, CtrPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	cd, err := s.Run(ctx, stack.ContainerConfig{ID: "db", NS: db, Networks: []stack.Attachment{{Network: "app"}}})
	if err != nil {
		t.Fatal(err)
	}
	webAddr, dbAddr := cw.Endpoints[0].Addrs[0].Addr(), cd.Endpoints[0].Addrs[0].Addr()
	ns := cd.Nameservers[0]
	if ns != nw.Subnets[0].Gateway {
		t.Fatalf("nameserver %s, want the gateway %s", ns, nw.Subnets[0].Gateway)
	}

	check := func(when string) {
		t.Helper()
		if err := nstest.Ping(ctx, db, webAddr); err != nil {
			t.Errorf("%s: db pings web: %v", when, err)
		}
		mustResolve(t, db, ns, "web", webAddr)
		mustResolve(t, db, ns, "www", webAddr)
		mustResolve(t, web, ns, "db", dbAddr)
		at := netip.AddrPortFrom(out.HostAddr.Addr(), 8080).String()
		if r, err := nstest.Exchange(ctx, out.NS, "tcp", at, "hi"); err != nil || r.Peer.Addr() != out.Addr {
			t.Errorf("%s: the outside reaches web at %s: %+v, %v", when, at, r, err)
		}
		if r, err := nstest.Exchange(ctx, db, "tcp", netip.AddrPortFrom(out.Addr, uint16(nstest.Serve(t, out.NS, "tcp", "0.0.0.0:0").Addr.Port())).String(), "x"); err != nil || r.Peer.Addr() != out.HostAddr.Addr() {
			t.Errorf("%s: db reaches the outside behind the host's address: %+v, %v", when, r, err)
		}
	}
	check("running")

	// The process restarts: a new Stack on the same state.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, stack.ContainerConfig{ID: "x", NS: db, Networks: []stack.Attachment{{Network: "app"}}}); !errors.Is(err, stack.ErrClosed) {
		t.Fatalf("Run on a closed Stack: %v", err)
	}
	s = open(t, host, dir)
	check("after a restart")
	if cs, err := s.Containers(); err != nil || len(cs) != 2 {
		t.Fatalf("Containers after a restart: %+v, %v", cs, err)
	}
	// A port the restarted stack published is still reserved.
	if _, err := host.Listen("tcp", "0.0.0.0:8080"); err == nil {
		t.Error("a local program could take published port 8080 after the restart")
	}

	// A firewall reload deletes nsnet's table.
	if err := host.NFTables(func(c *nftables.Conn) error {
		c.DelTable(&nftables.Table{Name: "nsnet", Family: nftables.TableFamilyINet})
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a firewall reload")

	// Down: the network is in use until its containers stop.
	if err := s.DeleteNetwork(ctx, "app"); !errors.Is(err, stack.ErrInUse) {
		t.Fatalf("DeleteNetwork with containers: %v, want ErrInUse", err)
	}
	for _, id := range []string{"web", "db", "web"} {
		if err := s.Stop(ctx, id); err != nil {
			t.Fatalf("Stop %s: %v", id, err)
		}
	}
	if _, err := lookup(t, db, ns, "web"); err == nil {
		t.Error("web still resolves after it stopped")
	}
	if err := s.DeleteNetwork(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNetwork(ctx, "app"); err != nil {
		t.Fatalf("DeleteNetwork again: %v", err)
	}
	if links := nstest.LinkNames(t, web); len(links) != 1 {
		t.Errorf("web keeps %v", links)
	}
	fi, err := os.Stat(filepath.Join(dir, "stack.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("stack.json: %v, %v; want mode 0600", fi, err)
	}
}

// TestRunFailsHalfWay: a port that cannot be published fails Run, and the
// container is left as it was: no interface, no name, no state.
func TestRunFailsHalfWay(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	s := open(t, host, filepath.Join(t.TempDir(), "state"))
	nw, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", "0.0.0.0:9090") // a local program holds the port
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctr, peer := nstest.Container(t, host), nstest.Container(t, host)
	if _, err := s.Run(ctx, stack.ContainerConfig{ID: "peer", NS: peer, Networks: []stack.Attachment{{Network: "n"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Run(ctx, stack.ContainerConfig{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n"}},
		Ports: []portmap.Mapping{{HostPort: 9090, CtrPort: 80}}})
	if !errors.Is(err, portmap.ErrPortInUse) {
		t.Fatalf("Run with a taken port: %v, want portmap.ErrPortInUse", err)
	}
	if links := nstest.LinkNames(t, ctr); len(links) != 1 {
		t.Errorf("the container keeps %v", links)
	}
	if _, err := lookup(t, peer, nw.Subnets[0].Gateway, "c"); err == nil {
		t.Error("c resolves after its Run failed")
	}
	if cs, _ := s.Containers(); len(cs) != 1 {
		t.Errorf("Containers: %+v, want only peer", cs)
	}
	// The same call once the port is free works.
	ln.Close()
	if _, err := s.Run(ctx, stack.ContainerConfig{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n"}},
		Ports: []portmap.Mapping{{HostPort: 9090, CtrPort: 80}}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c", "peer"} {
		if err := s.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNetwork(ctx, "n"); err != nil {
		t.Fatal(err)
	}
}

// TestBadInput: typed errors, and nothing made.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	var ve *netns.ValidationError
	for _, cfg := range []stack.Config{{}, {StateDir: "relative/dir"}, {StateDir: "/x", Upstreams: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}}} {
		if _, err := stack.Open(ctx, host, cfg); !errors.As(err, &ve) {
			t.Errorf("Open(%+v): %v, want a *netns.ValidationError", cfg, err)
		}
	}
	if _, err := stack.Open(ctx, nil, stack.Config{StateDir: t.TempDir()}); !errors.As(err, &ve) {
		t.Errorf("Open(nil host): %v", err)
	}
	s := open(t, host, filepath.Join(t.TempDir(), "state"))
	if _, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "bad name"}); !errors.As(err, &ve) {
		t.Errorf("CreateNetwork(bad name): %v", err)
	}
	ctr := nstest.Container(t, host)
	for _, cfg := range []stack.ContainerConfig{
		{ID: "", NS: ctr, Networks: []stack.Attachment{{Network: "n"}}},
		{ID: "c", Networks: []stack.Attachment{{Network: "n"}}},
		{ID: "c", NS: ctr},
		{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n"}, {Network: "n"}}},
		{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n", Aliases: []string{"a b"}}}},
		{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n"}}, Ports: []portmap.Mapping{{HostPort: 70000, CtrPort: 80}}},
		{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "n"}}, Ports: []portmap.Mapping{{HostPort: 80, CtrPort: 80, CtrAddr: netip.MustParseAddr("10.0.0.1")}}},
	} {
		if _, err := s.Run(ctx, cfg); err == nil {
			t.Errorf("Run(%+v): no error", cfg)
		}
	}
	if _, err := s.Run(ctx, stack.ContainerConfig{ID: "c", NS: ctr, Networks: []stack.Attachment{{Network: "nope"}}}); !errors.Is(err, stack.ErrNotFound) {
		t.Errorf("Run on a network that does not exist: %v, want ErrNotFound", err)
	}
	var zero *stack.Stack
	if _, err := zero.Run(ctx, stack.ContainerConfig{}); !errors.Is(err, stack.ErrClosed) {
		t.Errorf("Run on a nil Stack: %v", err)
	}
	if err := zero.Close(); err != nil {
		t.Errorf("Close on a nil Stack: %v", err)
	}
	if links := nstest.LinkNames(t, ctr); len(links) != 1 {
		t.Errorf("the container has %v", links)
	}
}

// TestStopAfterCrash: a Run cut short by a crash (here: the interface and a
// port made, as Run makes them, the state never saved) is cleaned up by
// Stop of the same ID, as CNI's DEL would.
func TestStopAfterCrash(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := open(t, host, dir)
	nw, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ctr := nstest.Container(t, host)
	// What Run does before it saves, done behind the Stack's back.
	alloc, err := ipam.New(mustFileStore(t, filepath.Join(dir, "ipam")), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bridge.Open(ctx, host, alloc, "n")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := b.Attach(ctx, bridge.EndpointConfig{ID: "crashed", NS: ctr, DefaultRoute: true})
	if err != nil {
		t.Fatal(err)
	}
	mp, err := portmap.New(host, portmap.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mp.Add(ctx, portmap.Mapping{HostPort: 9300, CtrAddr: ep.Addrs[0].Addr(), CtrPort: 80, ID: "crashed"}); err != nil {
		t.Fatal(err)
	}
	mp.Close() // the crashed process's reservations go with it

	if err := s.Stop(ctx, "crashed"); err != nil {
		t.Fatal(err)
	}
	if links := nstest.LinkNames(t, ctr); len(links) != 1 {
		t.Errorf("the container keeps %v", links)
	}
	if ms, err := portmap.List(ctx, host); err != nil || len(ms) != 0 {
		t.Errorf("mappings left: %v, %v", ms, err)
	}
	if err := s.DeleteNetwork(ctx, nw.Name); err != nil {
		t.Fatal(err)
	}
}

func mustFileStore(t *testing.T, dir string) *ipam.FileStore {
	t.Helper()
	st, err := ipam.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestRunRepairs: Run of a running container checks its interfaces and
// makes again what drifted behind the stack's back (an address, the
// interface itself) with the same address, instead of returning success
// for an interface that does not work.
func TestRunRepairs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	s := open(t, host, filepath.Join(t.TempDir(), "state"))
	if _, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	defer s.DeleteNetwork(ctx, "n")
	a, b := nstest.Container(t, host), nstest.Container(t, host)
	cfg := stack.ContainerConfig{ID: "a", NS: a, Networks: []stack.Attachment{{Network: "n"}}}
	ca, err := s.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx, "a")
	if _, err := s.Run(ctx, stack.ContainerConfig{ID: "b", NS: b, Networks: []stack.Attachment{{Network: "n"}}}); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx, "b")
	addr := ca.Endpoints[0].Addrs[0]
	for _, drift := range []struct {
		what string
		do   func() error
	}{
		{"its address", func() error {
			h, err := a.Netlink()
			if err != nil {
				return err
			}
			l, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}})
		}},
		{"its interface", func() error {
			h, err := a.Netlink()
			if err != nil {
				return err
			}
			l, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.LinkDel(l)
		}},
	} {
		if err := drift.do(); err != nil {
			t.Fatalf("%s: %v", drift.what, err)
		}
		if err := nstest.Ping(ctx, b, addr.Addr()); err == nil {
			t.Fatalf("%s gone, b still pings a", drift.what)
		}
		again, err := s.Run(ctx, cfg)
		if err != nil {
			t.Fatalf("Run after %s went: %v", drift.what, err)
		}
		if got := again.Endpoints[0].Addrs[0]; got != addr {
			t.Errorf("after %s went: address %s, want %s", drift.what, got, addr)
		}
		if err := nstest.Ping(ctx, b, addr.Addr()); err != nil {
			t.Errorf("after %s went and Run: b pings a: %v", drift.what, err)
		}
	}
}
