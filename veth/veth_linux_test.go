package veth

// These tests are in package veth (not veth_test) to reach afterCreate, the
// fault-injection point; nstest does not import veth, so there is no cycle.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func addAddr(t testing.TB, ns *netns.NS, name, cidr string) {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}

func TestPairIntoNamespace(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	name := nstest.Name(t, "nsv")
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	ends, err := Pair(t.Context(), host, Config{
		Name:  name,
		Peer:  End{NS: ctr, Name: "eth0", MAC: mac},
		MTU:   1400,
		Up:    true,
		Alias: "nsnet test pair",
	})
	if err != nil {
		t.Fatalf("Pair: %v", err)
	}
	defer Delete(t.Context(), host, name)

	if ends.Host.Name != name || ends.Peer.Name != "eth0" || !ends.Peer.NS.Equal(ctr) || !ends.Host.NS.Equal(host) {
		t.Fatalf("ends = %+v", ends)
	}
	if !bytes.Equal(ends.Peer.MAC, mac) {
		t.Errorf("peer MAC = %v, want %v", ends.Peer.MAC, mac)
	}
	if ends.Host.MAC[0]&2 == 0 || ends.Host.MAC[0]&1 != 0 {
		t.Errorf("generated MAC %v is not unicast, locally administered", ends.Host.MAC)
	}
	// The peer was created in ctr under its final name: the host never had
	// a link of that name.
	if slices.Contains(nstest.LinkNames(t, host), "eth0") {
		t.Fatal("eth0 is in the host")
	}
	ch, _ := ctr.Netlink()
	peer, err := ch.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	hh, _ := host.Netlink()
	hostEnd, err := hh.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{peer, hostEnd} {
		a := l.Attrs()
		if a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
			t.Errorf("%s: MTU %d, flags %v; want 1400, up", a.Name, a.MTU, a.Flags)
		}
	}
	if peer.Attrs().Index != ends.Peer.Index || hostEnd.Attrs().Index != ends.Host.Index {
		t.Errorf("indexes: kernel %d/%d, returned %d/%d", hostEnd.Attrs().Index, peer.Attrs().Index, ends.Host.Index, ends.Peer.Index)
	}
	if hostEnd.Attrs().Alias != "nsnet test pair" {
		t.Errorf("host end alias %q, want the one given", hostEnd.Attrs().Alias)
	}
	if !bytes.Equal(hostEnd.Attrs().HardwareAddr, ends.Host.MAC) {
		t.Errorf("host MAC: kernel %v, returned %v", hostEnd.Attrs().HardwareAddr, ends.Host.MAC)
	}

	// Traffic both ways (S1).
	addAddr(t, host, name, "192.168.1.1/24")
	addAddr(t, ctr, "eth0", "192.168.1.2/24")
	if err := nstest.Ping(t.Context(), host, netip.MustParseAddr("192.168.1.2")); err != nil {
		t.Fatal(err)
	}
	if err := nstest.Ping(t.Context(), ctr, netip.MustParseAddr("192.168.1.1")); err != nil {
		t.Fatal(err)
	}
	srv := nstest.Serve(t, ctr, "tcp", "0.0.0.0:8080")
	r, err := nstest.Exchange(t.Context(), host, "tcp", "192.168.1.2:8080", "hi")
	if err != nil || r.Data != "hi" || r.Peer.Addr() != netip.MustParseAddr("192.168.1.1") {
		t.Fatalf("TCP across the pair: %+v, %v", r, err)
	}
	srv.Close()

	// Delete by the peer's end takes the pair; deleting again succeeds.
	if err := Delete(t.Context(), ctr, "eth0"); err != nil {
		t.Fatalf("Delete by peer: %v", err)
	}
	if slices.Contains(nstest.LinkNames(t, host), name) {
		t.Fatal("host end survived deleting the peer")
	}
	for _, ns := range []*netns.NS{host, ctr} {
		if err := Delete(t.Context(), ns, name); err != nil {
			t.Fatalf("Delete of a gone pair: %v", err)
		}
	}
}

func TestPairGeneratedNamesSameNamespace(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ends, err := Pair(t.Context(), host, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []Link{ends.Host, ends.Peer} {
		if !strings.HasPrefix(l.Name, "veth") || len(l.Name) != 11 || !l.NS.Equal(host) {
			t.Errorf("generated end %+v: want veth + 7 hex digits in host", l)
		}
	}
	names := nstest.LinkNames(t, host)
	if !slices.Contains(names, ends.Host.Name) || !slices.Contains(names, ends.Peer.Name) {
		t.Fatalf("links %v, want both ends", names)
	}
	if err := Delete(t.Context(), host, ends.Host.Name); err != nil {
		t.Fatal(err)
	}
	if names := nstest.LinkNames(t, host); len(names) != 1 {
		t.Fatalf("after Delete: %v", names)
	}
}

func TestPairIdempotent(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	name := nstest.Name(t, "nsv")
	cfg := Config{Name: name, Peer: End{NS: ctr, Name: "eth0"}, MTU: 1450, Up: true}
	first, err := Pair(t.Context(), host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer Delete(t.Context(), host, name)
	second, err := Pair(t.Context(), host, cfg)
	if err != nil {
		t.Fatalf("same Pair again: %v", err)
	}
	if first.Host.Index != second.Host.Index || first.Peer.Index != second.Peer.Index ||
		!bytes.Equal(first.Host.MAC, second.Host.MAC) {
		t.Fatalf("second Pair returned %+v, first %+v", second, first)
	}
	// Other settings: ErrExists.
	other := cfg
	other.MTU = 1500
	if _, err := Pair(t.Context(), host, other); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Pair with another MTU: %v, want os.ErrExist", err)
	}
	if n := len(nstest.LinkNames(t, host)); n != 2 {
		t.Fatalf("host has %d links, want lo and the pair", n)
	}
}

func TestPairNameTaken(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	hh, _ := host.Netlink()
	ch, _ := ctr.Netlink()
	taken := nstest.Name(t, "nsb")
	if err := hh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: taken}}); err != nil {
		t.Fatal(err)
	}
	defer hh.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: taken}})
	if err := ch.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
		t.Fatal(err)
	}

	fresh := nstest.Name(t, "nsv")
	for _, cfg := range []Config{
		{Name: taken, Peer: End{NS: ctr, Name: "eth1"}},  // taken in the host
		{Name: fresh, Peer: End{NS: ctr, Name: "eth0"}},  // taken in the container
		{Name: taken, Peer: End{NS: host, Name: "peer"}}, // taken, same namespace
	} {
		_, err := Pair(t.Context(), host, cfg)
		if !errors.Is(err, os.ErrExist) {
			t.Errorf("Pair(%s/%s): %v, want os.ErrExist", cfg.Name, cfg.Peer.Name, err)
		}
		var oe *netns.OpError
		if !errors.As(err, &oe) || !errors.Is(err, unix.EEXIST) {
			t.Errorf("error %v is not an OpError wrapping EEXIST", err)
		}
	}
	if got := nstest.LinkNames(t, host); len(got) != 2 {
		t.Errorf("host links after refused pairs: %v", got)
	}
	if got := nstest.LinkNames(t, ctr); len(got) != 2 {
		t.Errorf("container links after refused pairs: %v", got)
	}
}

func TestPairBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{Name: "a-name-of-16-byt"}, "Config.Name"},
		{Config{Peer: End{Name: "container-eth0-x"}}, "Config.Peer.Name"},
		{Config{Name: "has space"}, "Config.Name"},
		{Config{Name: "a/b"}, "Config.Name"},
		{Config{Name: "x", Peer: End{Name: "x"}}, "Config.Peer.Name"},
		{Config{MTU: 67}, "Config.MTU"},
		{Config{MTU: 65536}, "Config.MTU"},
		{Config{MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}, "Config.MAC"},
		{Config{Peer: End{MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}}}, "Config.Peer.MAC"},
		{Config{MAC: net.HardwareAddr{2, 0, 0, 0}}, "Config.MAC"},
		{Config{Alias: strings.Repeat("a", 256)}, "Config.Alias"},
	} {
		var ve *netns.ValidationError
		// A nil namespace: validation must fail before it is ever used.
		_, err := Pair(t.Context(), nil, tc.cfg)
		if !errors.As(err, &ve) || ve.Field != tc.field {
			t.Errorf("Pair(%+v): %v, want a ValidationError on %s", tc.cfg, err, tc.field)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	var ve *netns.ValidationError
	if err := Delete(t.Context(), nil, "sixteen-bytes-xx"); !errors.As(err, &ve) {
		t.Errorf("Delete of a bad name: %v", err)
	}
}

// TestPairFailsHalfWay injects a failure after the kernel made the pair: the
// pair must be gone afterwards, in both namespaces.
func TestPairFailsHalfWay(t *testing.T) {
	// Not parallel: afterCreate is package state.
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	injected := errors.New("injected")
	afterCreate = func() error { return injected }
	defer func() { afterCreate = nil }()
	name := nstest.Name(t, "nsv")
	_, err := Pair(t.Context(), host, Config{Name: name, Peer: End{NS: ctr, Name: "eth0"}, Up: true})
	if !errors.Is(err, injected) {
		t.Fatalf("Pair: %v, want the injected error", err)
	}
	if got := nstest.LinkNames(t, host); len(got) != 1 {
		t.Errorf("host links after a failed Pair: %v", got)
	}
	if got := nstest.LinkNames(t, ctr); len(got) != 1 {
		t.Errorf("container links after a failed Pair: %v", got)
	}
}

// TestDeleteBothEndsGone: Delete returns before the kernel has freed the
// pair, but when it returns neither end, nor an address of either, is
// left in its namespace, whichever end was named. The other end is the
// second of the kernel's batch, so this is the end to check.
func TestDeleteBothEndsGone(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	ctr := nstest.Container(t, host)
	for round := range 100 {
		name := nstest.Name(t, "nsd")
		if _, err := Pair(t.Context(), host, Config{Name: name, Peer: End{NS: ctr, Name: "eth0"}, Up: true}); err != nil {
			t.Fatal(err)
		}
		addAddr(t, host, name, "192.168.7.1/24")
		addAddr(t, ctr, "eth0", "192.168.7.2/24")
		delNS, delName, otherNS := host, name, ctr
		if round%2 == 1 {
			delNS, delName, otherNS = ctr, "eth0", host
		}
		if err := Delete(t.Context(), delNS, delName); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, ns := range []*netns.NS{delNS, otherNS} {
			links, err := ns.Links()
			if err != nil {
				t.Fatal(err)
			}
			if i := slices.IndexFunc(links, func(l netlink.Link) bool { return l.Type() == "veth" }); i >= 0 {
				t.Fatalf("round %d: %s left in %s after Delete", round, links[i].Attrs().Name, ns)
			}
			addrs, err := ns.Addrs(nil, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			if i := slices.IndexFunc(addrs, func(a netlink.Addr) bool { return a.IP.To4()[2] == 7 }); i >= 0 {
				t.Fatalf("round %d: address %v left in %s after Delete", round, addrs[i], ns)
			}
		}
	}
}

func TestDeleteRefusesOtherKinds(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	h, _ := host.Netlink()
	name := nstest.Name(t, "nsb")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	defer h.LinkDel(br)
	if err := Delete(t.Context(), host, name); err == nil {
		t.Fatal("Delete removed a bridge")
	}
	if !slices.Contains(nstest.LinkNames(t, host), name) {
		t.Fatal("the bridge is gone")
	}
}

// TestConcurrent: 100 goroutines at once each create a namespace and a veth
// pair into it and run code inside namespaces; after every step the
// goroutine's thread must be back in the process's namespace.
func TestConcurrent(t *testing.T) {
	host := nstest.Host(t)
	self, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	var mu sync.Mutex
	var errs []error
	check := func(step string) {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil || st.Ino != self.ID().Ino {
			mu.Lock()
			errs = append(errs, fmt.Errorf("after %s: thread in net:[%d], want %s (%v)", step, st.Ino, self.ID(), err))
			mu.Unlock()
		}
	}
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			ctr, err := netns.New()
			check("netns.New")
			if err != nil {
				fail(err)
				return
			}
			defer ctr.Close()
			name := fmt.Sprintf("nsc%d", i)
			ends, err := Pair(t.Context(), host, Config{Name: name, Peer: End{NS: ctr, Name: "eth0"}, Up: true})
			check("veth.Pair")
			if err != nil {
				fail(err)
				return
			}
			err = ctr.Do(func() error {
				l, err := net.InterfaceByName("eth0")
				if err != nil {
					return err
				}
				if l.Index != ends.Peer.Index {
					return fmt.Errorf("eth0 index %d inside, %d returned", l.Index, ends.Peer.Index)
				}
				return nil
			})
			check("Do")
			if err != nil {
				fail(err)
			}
			if err := Delete(t.Context(), host, name); err != nil {
				fail(err)
			}
			check("veth.Delete")
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
}

// TestPairGroup: the host end has its device group from the request that
// creates it; a pair of another group is not the one asked for.
func TestPairGroup(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	cfg := Config{Name: "vg-host", Peer: End{Name: "vg-peer"}, Group: 0x6e123456}
	ends, err := Pair(t.Context(), host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer Delete(t.Context(), host, ends.Host.Name)
	h, _ := host.Netlink()
	l, err := h.LinkByName("vg-host")
	if err != nil || l.Attrs().Group != cfg.Group {
		t.Fatalf("host end: %v, group %#x, want %#x", err, l.Attrs().Group, cfg.Group)
	}
	cfg.Group = 7
	if _, err := Pair(t.Context(), host, cfg); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Pair of another group: %v, want os.ErrExist", err)
	}
}
