package portmap_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// free reports whether a program of host can take the port (no
// reservation holds it).
func free(t *testing.T, host *netns.NS, proto string, port int) bool {
	t.Helper()
	addr := fmt.Sprint("0.0.0.0:", port)
	if proto == "udp" {
		c, err := host.ListenPacket("udp4", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	l, err := host.Listen("tcp4", addr)
	if err == nil {
		l.Close()
	}
	return err == nil
}

func listed(t *testing.T, mp *portmap.Mapper) []string {
	t.Helper()
	ms, err := mp.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprint(m.Proto, " ", m.HostPort, " ", m.ID))
	}
	return out
}

// TestAddAllAllOrNothing: a batch with one mapping that conflicts (with
// the host's mappings or with another of the batch), is bad, or whose port
// a program holds publishes nothing, releases every reservation it took,
// and names the mapping in a *BatchError.
func TestAddAllAllOrNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.60.0.0/24")
	_, ctr := w.container(t, a, "c")
	w.publish(t, portmap.Mapping{HostPort: 9200, CtrAddr: ctr, CtrPort: 80, ID: "old"})
	held, err := w.host.Listen("tcp4", "0.0.0.0:9299")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	good := []portmap.Mapping{
		{HostPort: 9201, CtrAddr: ctr, CtrPort: 80, ID: "new"},
		{Proto: "udp", HostPort: 9202, CtrAddr: ctr, CtrPort: 53, ID: "new"},
		{HostPort: 9203, HostPortEnd: 9205, CtrAddr: ctr, CtrPort: 81, CtrPortEnd: 83, ID: "new"},
		{CtrAddr: ctr, CtrPort: 84, ID: "new"}, // ephemeral
	}
	for _, c := range []struct {
		what string
		bad  portmap.Mapping
		is   error
	}{
		{"a conflict with the host's mapping", portmap.Mapping{HostPort: 9200, CtrAddr: ctr, CtrPort: 90, ID: "new"}, portmap.ErrConflict},
		{"a conflict within the batch", portmap.Mapping{HostPort: 9204, CtrAddr: ctr, CtrPort: 90, ID: "new"}, portmap.ErrConflict},
		{"a port a program holds", portmap.Mapping{HostPort: 9299, CtrAddr: ctr, CtrPort: 90, ID: "new"}, portmap.ErrPortInUse},
		{"a bad mapping", portmap.Mapping{HostPort: 9206, CtrAddr: ctr, ID: "new"}, nil},
	} {
		before := listed(t, w.mp)
		batch := append(slices.Clone(good), c.bad)
		_, err := w.mp.AddAll(t.Context(), batch)
		var be *portmap.BatchError
		if !errors.As(err, &be) || be.Index != len(good) || be.Mapping.HostPort != c.bad.HostPort {
			t.Errorf("%s: %v, want a *BatchError for mapping %d", c.what, err, len(good))
		}
		var ve *portmap.ValidationError
		if c.is != nil && !errors.Is(err, c.is) || c.is == nil && !errors.As(err, &ve) {
			t.Errorf("%s: %v, want %v", c.what, err, c.is)
		}
		if after := listed(t, w.mp); !slices.Equal(before, after) {
			t.Errorf("%s: the table changed: %v, was %v", c.what, after, before)
		}
		for _, m := range good[:3] {
			for p := m.HostPort; p <= max(m.HostPort, m.HostPortEnd); p++ {
				if !free(t, w.host, m.Proto, p) {
					t.Errorf("%s: %s port %d still reserved", c.what, m.Proto, p)
				}
			}
		}
	}

	got, err := w.mp.AddAll(t.Context(), good)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(good) || got[3].HostPort == 0 {
		t.Fatalf("AddAll returned %+v", got)
	}
	if n := len(listed(t, w.mp)); n != 1+1+1+3+1 {
		t.Errorf("%d elements listed after AddAll, want 7: %v", n, listed(t, w.mp))
	}
	if err := w.mp.RemoveAll(t.Context(), got); err != nil {
		t.Fatal(err)
	}
	if l := listed(t, w.mp); !slices.Equal(l, []string{"tcp 9200 old"}) {
		t.Errorf("after RemoveAll: %v", l)
	}
	for _, m := range got {
		if !free(t, w.host, m.Proto, m.HostPort) {
			t.Errorf("after RemoveAll: %s port %d still reserved", m.Proto, m.HostPort)
		}
	}
}

// TestRemoveOwner removes the mappings of one owner and no other's.
func TestRemoveOwner(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.61.0.0/24")
	_, ctr := w.container(t, a, "c")
	if _, err := w.mp.AddAll(t.Context(), []portmap.Mapping{
		{HostPort: 9210, CtrAddr: ctr, CtrPort: 80, ID: "a"},
		{Proto: "udp", HostPort: 9211, HostPortEnd: 9212, CtrAddr: ctr, CtrPort: 53, CtrPortEnd: 54, ID: "a"},
		{HostPort: 9213, CtrAddr: ctr, CtrPort: 80, ID: "b"},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.mp.RemoveOwner(context.Background(), "b") })
	if err := w.mp.RemoveOwner(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if l := listed(t, w.mp); !slices.Equal(l, []string{"tcp 9213 b"}) {
		t.Errorf("after RemoveOwner(a): %v", l)
	}
	for _, p := range []struct {
		proto string
		port  int
		free  bool
	}{{"tcp", 9210, true}, {"udp", 9211, true}, {"udp", 9212, true}, {"tcp", 9213, false}} {
		if got := free(t, w.host, p.proto, p.port); got != p.free {
			t.Errorf("%s port %d free: %v, want %v", p.proto, p.port, got, p.free)
		}
	}
	var ve *portmap.ValidationError
	if err := w.mp.RemoveOwner(t.Context(), ""); !errors.As(err, &ve) {
		t.Errorf("RemoveOwner(\"\"): %v, want a *ValidationError", err)
	}
	if l := listed(t, w.mp); len(l) != 1 {
		t.Errorf("after RemoveOwner(\"\"): %v", l)
	}
}

// TestBatchConntrack: AddAll and RemoveAll of many UDP mappings on every
// address clean their conntrack entries in one pass (a dump, as they are
// many), exactly: the host's entries to the ports go on AddAll, the DNATed
// ones on RemoveAll, and entries to another machine's port or to another
// container stay.
func TestBatchConntrack(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	h, err := w.host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	ctr := netip.MustParseAddr("10.62.0.2")
	client := net.IPv4(10, 63, 0, 9).To4()
	entry := func(sport uint16, dst net.IP, dport uint16, replySrc net.IP, replySport uint16) {
		t.Helper()
		f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 600,
			Forward: netlink.IPTuple{SrcIP: client, DstIP: dst, Protocol: unix.IPPROTO_UDP, SrcPort: sport, DstPort: dport},
			Reverse: netlink.IPTuple{SrcIP: replySrc, DstIP: client, Protocol: unix.IPPROTO_UDP, SrcPort: replySport, DstPort: sport}}
		if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.FAMILY_V4, f); err != nil {
			t.Fatal(err)
		}
	}
	count := func(match func(f *netlink.ConntrackFlow) bool) int {
		t.Helper()
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range flows {
			if match(f) {
				n++
			}
		}
		return n
	}
	local := w.out.HostAddr.Addr().AsSlice()
	elsewhere := net.IPv4(10, 64, 0, 1).To4()
	var ms []portmap.Mapping
	for i := range 20 {
		port := uint16(9300 + i)
		ms = append(ms, portmap.Mapping{Proto: "udp", HostPort: int(port), CtrAddr: ctr, CtrPort: 53, ID: "c"})
		entry(1000, local, port, local, port)         // to the host, from before the mapping
		entry(1000, elsewhere, port, elsewhere, port) // to another machine
	}
	toHost := func(f *netlink.ConntrackFlow) bool { return f.Forward.DstIP.Equal(local) }
	toElsewhere := func(f *netlink.ConntrackFlow) bool { return f.Forward.DstIP.Equal(elsewhere) }
	if _, err := w.mp.AddAll(t.Context(), ms); err != nil {
		t.Fatal(err)
	}
	if n := count(toHost); n != 0 {
		t.Errorf("after AddAll: %d entries to the host's ports, want 0", n)
	}
	if n := count(toElsewhere); n != 20 {
		t.Errorf("after AddAll: %d entries to another machine's ports, want 20", n)
	}

	other := net.IPv4(10, 62, 0, 3).To4()
	for i := range 20 {
		port := uint16(9300 + i)
		entry(port, local, port, ctr.AsSlice(), 53) // DNATed by the mapping
	}
	entry(2000, local, 9300, other, 53) // to another container
	if err := w.mp.RemoveAll(t.Context(), ms); err != nil {
		t.Fatal(err)
	}
	if n := count(func(f *netlink.ConntrackFlow) bool { return f.Reverse.SrcIP.Equal(ctr.AsSlice()) }); n != 0 {
		t.Errorf("after RemoveAll: %d entries DNATed to the container, want 0", n)
	}
	if n := count(func(f *netlink.ConntrackFlow) bool { return f.Reverse.SrcIP.Equal(other) }); n != 1 {
		t.Errorf("after RemoveAll: %d entries of another container, want 1", n)
	}
	if n := count(toElsewhere); n != 20 {
		t.Errorf("after RemoveAll: %d entries to another machine's ports, want 20", n)
	}
}
