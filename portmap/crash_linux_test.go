package portmap_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// crashOp is a call the harness kills: AddAll of owner "new"'s mappings
// or RemoveAll of owner "victim"'s, and the steps it is killed at.
type crashOp struct {
	name  string
	add   bool
	ms    []portmap.Mapping
	steps []string
}

// TestCrashPoints kills a child process (SIGKILL) at every step of Add,
// AddAll, Remove and RemoveAll, three rounds, then at random instants of
// them, more than 100 kills in all. After each, the documented recovery
// (doc.go, Recovery: the Removes that were in flight again, a new
// Mapper's GC with the owners that are live, Reserve for what is left)
// must leave the table holding exactly the acknowledged mappings,
// route_localnet on for the bridge only while a mapping on 127.0.0.1 needs
// it (and the table's record of it the same), no UDP conntrack entry that
// sends a removed port to the container nor one that keeps a published
// port from it, and traffic through a published port working.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.45.0.0/24")
	ctr, ctrAddr := w.container(t, a, "ctr")
	nstest.Serve(t, ctr, "tcp", "0.0.0.0:80")
	for p := range 3 {
		nstest.Serve(t, ctr, "udp", fmt.Sprint("0.0.0.0:", 53+p))
	}
	br := a.Config().Bridge
	uplink := w.out.HostAddr.Addr()
	lo := netip.MustParseAddr("127.0.0.1")
	ops := []crashOp{
		{"add", true, []portmap.Mapping{{HostPort: 7100, CtrAddr: ctrAddr, CtrPort: 80, ID: "new"}},
			[]string{"reserve", "forwarding", "nft", "localnet", "conntrack"}},
		{"addall", true, []portmap.Mapping{
			{Proto: "udp", HostPort: 7101, HostPortEnd: 7102, CtrAddr: ctrAddr, CtrPort: 53, CtrPortEnd: 54, ID: "new"},
			{HostAddr: lo, HostPort: 7103, CtrAddr: ctrAddr, CtrPort: 80, ID: "new"},
			{HostAddr: uplink, HostPort: 7104, CtrAddr: ctrAddr, CtrPort: 80, ID: "new"}},
			[]string{"reserve", "forwarding", "nft", "localnet", "conntrack"}},
		{"remove", false, []portmap.Mapping{{Proto: "udp", HostPort: 7200, CtrAddr: ctrAddr, CtrPort: 53, ID: "victim"}},
			[]string{"localnet-off", "nft", "release", "conntrack"}},
		{"removeall", false, []portmap.Mapping{
			{HostPort: 7201, CtrAddr: ctrAddr, CtrPort: 80, ID: "victim"},
			{Proto: "udp", HostAddr: uplink, HostPort: 7202, CtrAddr: ctrAddr, CtrPort: 55, ID: "victim"},
			{HostAddr: lo, HostPort: 7203, CtrAddr: ctrAddr, CtrPort: 80, ID: "victim"}},
			[]string{"localnet-off", "nft", "release", "conntrack"}},
	}
	kills, ackedKills := 0, 0
	crash := func(round int, op crashOp, at string, delay time.Duration) {
		what := fmt.Sprintf("round %d, %s killed at %s", round, op.name, at)
		if at == "" {
			what = fmt.Sprintf("round %d, %s killed after %v", round, op.name, delay)
		}
		// The state the call starts from, acknowledged: a mapping of
		// "base" (on 127.0.0.1 too in odd rounds), and the victim's.
		base := []portmap.Mapping{{HostAddr: uplink, HostPort: 7000, CtrAddr: ctrAddr, CtrPort: 80, ID: "base"}}
		if round%2 == 1 {
			base[0].HostAddr = netip.Addr{}
		}
		setup := base
		if !op.add {
			setup = append(slices.Clone(base), op.ms...)
		}
		mp0 := newMapper(t, w.host, portmap.Config{})
		if _, err := mp0.AddAll(t.Context(), setup); err != nil {
			t.Fatalf("%s: setup: %v", what, err)
		}
		mp0.Close() // its process ends: the reservations go, the table stays
		// A client of each UDP port, before the call: an entry to the
		// host (an Add's to clean) or through the victim's mapping (a
		// Remove's to clean).
		for _, m := range op.ms {
			if m.Proto == "udp" {
				send(t, w.out.NS, 41000+m.HostPort, netip.AddrPortFrom(uplink, uint16(m.HostPort)))
			}
		}

		c := startChild(t, w.host)
		if at != "" {
			if got := c.do(t, "step "+at, nil); got != "ok" {
				t.Fatalf("%s: %s", what, got)
			}
		}
		cmd := "remove"
		if op.add {
			cmd = "add"
		}
		c.send(t, cmd, op.ms)
		acked := false
		if at != "" {
			if line := c.line(); line != "at "+at {
				t.Fatalf("%s: the child said %q", what, line)
			}
		} else {
			time.Sleep(delay)
		}
		acked = slices.Contains(c.rest(), "ok")
		kills++
		if acked {
			ackedKills++
		}

		// The recovery: the Removes in flight again (they are
		// idempotent and clean conntrack for elements that are gone),
		// GC with the live owners (the killed call's are not: an Add
		// not acknowledged, or a mapping whose removal was asked for),
		// Reserve for what is left.
		live := []string{"base"}
		model := slices.Clone(base)
		if op.add && acked {
			live = append(live, "new")
			model = append(model, op.ms...)
		}
		mp := newMapper(t, w.host, portmap.Config{})
		defer mp.Close()
		if !op.add {
			if err := mp.RemoveAll(t.Context(), op.ms); err != nil {
				t.Fatalf("%s: RemoveAll again: %v", what, err)
			}
		}
		if _, err := mp.GC(t.Context(), live); err != nil {
			t.Fatalf("%s: GC: %v", what, err)
		}
		got, err := mp.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range got {
			if err := mp.Reserve(m); err != nil {
				t.Errorf("%s: Reserve(%s): %v", what, m, err)
			}
		}
		checkModel(t, what, w.host, br, got, model)
		checkConntrack(t, what, w.host, ctrAddr, model, op.ms)

		// Traffic through the base port, and through a UDP port
		// published now.
		reach(t, what+": base port", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 7000))
		probe := portmap.Mapping{Proto: "udp", HostPort: 7300, CtrAddr: ctrAddr, CtrPort: 53, ID: "probe"}
		if _, err := mp.Add(t.Context(), probe); err != nil {
			t.Fatalf("%s: Add after the recovery: %v", what, err)
		}
		reach(t, what+": a port published after the recovery", w.out.NS, "udp", netip.AddrPortFrom(uplink, 7300))
		if err := mp.RemoveAll(t.Context(), append(model, probe)); err != nil {
			t.Fatalf("%s: cleanup: %v", what, err)
		}
		checkModel(t, what+", after the cleanup", w.host, br, nil, nil)
		h, err := w.host.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		h.ConntrackTableFlush(netlink.ConntrackTable)
	}

	for round := range 3 {
		for _, op := range ops {
			for _, at := range op.steps {
				crash(round, op, at, 0)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		crash(3+i%2, ops[rng.IntN(len(ops))], "", time.Duration(rng.IntN(4000))*time.Microsecond)
	}

	// A host with no table yet: killed once the table is made, before
	// the mapping is in it, the table is left empty; GC takes it away.
	bare := nstest.Host(t)
	for round := range 3 {
		c := startChild(t, bare)
		if got := c.do(t, "step table", nil); got != "ok" {
			t.Fatal(got)
		}
		c.send(t, "add", []portmap.Mapping{{HostPort: 7100, CtrAddr: ctrAddr, CtrPort: 80, ID: "new"}})
		if line := c.line(); line != "at table" {
			t.Fatalf("round %d, killed at table: the child said %q", round, line)
		}
		c.kill()
		kills++
		if !hasTable(t, bare) {
			t.Fatalf("round %d: no table after a kill at table", round)
		}
		mp := newMapper(t, bare, portmap.Config{})
		if _, err := mp.GC(t.Context(), nil); err != nil {
			t.Fatal(err)
		}
		mp.Close()
		if hasTable(t, bare) {
			t.Errorf("round %d, killed at table: the empty table is still there after GC", round)
		}
	}
	t.Logf("%d kills, %d of them after the call was acknowledged", kills, ackedKills)
	if kills < 100 {
		t.Errorf("%d kills, want at least 100", kills)
	}
}

// checkModel fails t unless the table holds exactly the mappings of model
// (got is List's), and route_localnet is on for the bridge br, and
// recorded, exactly when a mapping of model covers 127.0.0.1.
func checkModel(t *testing.T, what string, host *netns.NS, br string, got, model []portmap.Mapping) {
	t.Helper()
	if got == nil {
		var err error
		if got, err = portmap.List(t.Context(), host); err != nil {
			t.Fatal(err)
		}
	}
	want := perPort(model)
	if !slices.Equal(got, want) {
		t.Errorf("%s: the table holds %v, want %v", what, got, want)
	}
	need := slices.ContainsFunc(model, func(m portmap.Mapping) bool {
		return m.CtrAddr.Is4() && (!m.HostAddr.IsValid() || m.HostAddr.IsLoopback())
	})
	v, err := host.Sysctl("net/ipv4/conf/" + br + "/route_localnet")
	if err != nil {
		t.Fatal(err)
	}
	if (v == "1") != need {
		t.Errorf("%s: route_localnet of %s is %s, want it on: %v", what, br, v, need)
	}
	rec, err := nft.Localnet(t.Context(), host)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string(nil); need && !slices.Equal(rec, []string{br}) || !need && len(rec) > 0 {
		if need {
			want = []string{br}
		}
		t.Errorf("%s: the table records route_localnet on for %v, want %v", what, rec, want)
	}
}

// perPort is what List returns for ms: one mapping per port, in its order.
func perPort(ms []portmap.Mapping) []portmap.Mapping {
	out := []portmap.Mapping{}
	for _, m := range ms {
		n := max(m.HostPortEnd-m.HostPort, 0)
		for i := range n + 1 {
			p := m
			if p.Proto == "" {
				p.Proto = "tcp"
			}
			p.HostPort, p.HostPortEnd, p.CtrPort, p.CtrPortEnd = m.HostPort+i, 0, m.CtrPort+i, 0
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b portmap.Mapping) int {
		if c := strings.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		if c := a.HostAddr.Compare(b.HostAddr); c != 0 {
			return c
		}
		return a.HostPort - b.HostPort
	})
	if len(out) == 0 {
		return nil
	}
	return out
}

// checkConntrack fails t if a UDP entry of the host for a port of ms
// sends its packets to the container while that port is not published
// (model), or elsewhere while it is.
func checkConntrack(t *testing.T, what string, host *netns.NS, ctr netip.Addr, model, ms []portmap.Mapping) {
	t.Helper()
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	published := map[uint16]bool{}
	for _, m := range perPort(model) {
		if m.Proto == "udp" {
			published[uint16(m.HostPort)] = true
		}
	}
	ports := map[uint16]bool{}
	for _, m := range perPort(ms) {
		if m.Proto == "udp" {
			ports[uint16(m.HostPort)] = true
		}
	}
	for _, f := range flows {
		if f.Forward.Protocol != unix.IPPROTO_UDP || !ports[f.Forward.DstPort] {
			continue
		}
		toCtr := f.Reverse.SrcIP.Equal(net.IP(ctr.AsSlice()))
		if published[f.Forward.DstPort] && !toCtr {
			t.Errorf("%s: a conntrack entry keeps %s from the container: %s", what, f.Forward.SrcIP, f)
		}
		if !published[f.Forward.DstPort] && toCtr {
			t.Errorf("%s: a conntrack entry still sends port %d to the container: %s", what, f.Forward.DstPort, f)
		}
	}
}

// send sends one datagram from ns, from port sport, to dst.
func send(t *testing.T, ns *netns.NS, sport int, dst netip.AddrPort) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{Port: sport}, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func hasTable(t *testing.T, host *netns.NS) bool {
	t.Helper()
	found := false
	err := host.NFTables(func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily("nsnet", nftables.TableFamilyINet)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
