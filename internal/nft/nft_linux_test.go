package nft

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// forwardRules is the number of constant rules of the forward chain.
const forwardRules = 10

// state renders nsnet's table: rule count of forward and the sets' sizes.
func state(t *testing.T, ns *netns.NS) map[string]int {
	t.Helper()
	out := map[string]int{}
	err := ns.NFTables(func(c *nftables.Conn) error {
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
			return nil // no table: empty state
		}
		sc := newSchema()
		rules, err := c.GetRules(sc.table, sc.forward)
		if err != nil {
			return err
		}
		out["rules"] = len(rules)
		for _, s := range sc.sets() {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return err
			}
			out[s.Name] = len(elems)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEnsureIdempotentAndRestores(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	defer Delete(t.Context(), host)
	for range 2 {
		if err := Ensure(t.Context(), host); err != nil {
			t.Fatal(err)
		}
	}
	if got := state(t, host); got["rules"] != forwardRules {
		t.Fatalf("after two Ensure: %v, want %d rules", got, forwardRules)
	}
	if err := AddNetwork(t.Context(), host, Network{Bridge: "br-a", ICC: true}); err != nil {
		t.Fatal(err)
	}
	// Someone flushes the ruleset: Ensure puts the skeleton back.
	host.NFTables(func(c *nftables.Conn) error { c.FlushRuleset(); return c.Flush() })
	if got := state(t, host); len(got) != 0 {
		t.Fatalf("after flush ruleset: %v", got)
	}
	if err := Ensure(t.Context(), host); err != nil {
		t.Fatal(err)
	}
	if got := state(t, host); got["rules"] != forwardRules {
		t.Fatalf("after Ensure on a flushed ruleset: %v", got)
	}
}

func TestNetworks(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	a := Network{Bridge: "br-a", ICC: true}
	b := Network{Bridge: "br-b", Internal: true}
	for _, n := range []Network{a, b, a} {
		if err := AddNetwork(t.Context(), host, n); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]int{"rules": forwardRules, "bridges": 2, "same": 2, "internal": 1, "noicc": 1}
	if got := state(t, host); got["bridges"] != 2 || got["same"] != 2 || got["internal"] != 1 || got["noicc"] != 1 || got["rules"] != forwardRules {
		t.Fatalf("state %v, want %v", got, want)
	}
	if err := RemoveNetwork(t.Context(), host, "br-b"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveNetwork(t.Context(), host, "br-b"); err != nil {
		t.Fatalf("second RemoveNetwork: %v", err)
	}
	if got := state(t, host); got["bridges"] != 1 || got["internal"] != 0 || got["noicc"] != 0 {
		t.Fatalf("after removing b: %v", got)
	}
	// The last network takes the table with it.
	if err := RemoveNetwork(t.Context(), host, "br-a"); err != nil {
		t.Fatal(err)
	}
	if got := state(t, host); len(got) != 0 {
		t.Fatalf("after removing the last network: %v", got)
	}
	if err := RemoveNetwork(t.Context(), host, "br-a"); err != nil {
		t.Fatalf("RemoveNetwork without a table: %v", err)
	}
}

// TestOtherTables: a table that is not nsnet's is left as it is, and its
// drop policy is not changed.
func TestOtherTables(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	other := &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
	drop := nftables.ChainPolicyDrop
	err := host.NFTables(func(c *nftables.Conn) error {
		c.AddTable(other)
		c.AddChain(&nftables.Chain{Name: "FORWARD", Table: other, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer host.NFTables(func(c *nftables.Conn) error { c.DelTable(other); return c.Flush() })
	if err := AddNetwork(t.Context(), host, Network{Bridge: "br-a", ICC: true}); err != nil {
		t.Fatal(err)
	}
	if err := RemoveNetwork(t.Context(), host, "br-a"); err != nil {
		t.Fatal(err)
	}
	host.NFTables(func(c *nftables.Conn) error {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			t.Error(err)
		}
		if len(chains) != 1 || chains[0].Policy == nil || *chains[0].Policy != drop {
			t.Errorf("the other table's chains: %+v", chains)
		}
		return nil
	})
}

// vxlanElems counts the elements of the VXLAN sets.
func vxlanElems(t *testing.T, ns *netns.NS) (nets, peers int) {
	t.Helper()
	ns.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		n, _ := c.GetSetElements(sc.vxnets)
		p, _ := c.GetSetElements(sc.vxpeers)
		nets, peers = len(n), len(p)
		return nil
	})
	return nets, peers
}

// TestVXLAN: the filter's elements are per VNI, so that owners share it;
// the drop counter counts a packet sent to the port and VNI by who is not
// a peer (here the host itself, to its loopback), keeps its count when the
// skeleton is applied again, and the table goes with the last VNI.
func TestVXLAN(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	peer := netip.MustParseAddr("198.18.0.2")
	if err := SetVXLAN(t.Context(), host, nil, []VXLAN{{VNI: 42, Port: 4789, Peers: []netip.Addr{peer}}}); err != nil {
		t.Fatal(err)
	}
	if err := SetVXLAN(t.Context(), host, nil, []VXLAN{{VNI: 43, Port: 4789}}); err != nil {
		t.Fatal(err)
	}
	if n, p := vxlanElems(t, host); n != 2 || p != 1 {
		t.Fatalf("%d networks, %d peers; want 2 and 1", n, p)
	}
	send := func(vni uint32) {
		c, err := host.Dial(t.Context(), nil, "udp", "127.0.0.1:4789")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{8, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}); err != nil {
			t.Fatal(err)
		}
	}
	send(42)
	send(44) // not a VXLAN network of the host: not the filter's
	if in, out, err := VXLANDrops(t.Context(), host); err != nil || in != 1 || out != 0 {
		t.Fatalf("drops %d in, %d out, %v; want 1 and 0", in, out, err)
	}
	if err := Ensure(t.Context(), host); err != nil {
		t.Fatal(err)
	}
	if in, _, err := VXLANDrops(t.Context(), host); err != nil || in != 1 {
		t.Errorf("after Ensure: %d dropped, %v; want the count kept", in, err)
	}
	if err := SetVXLAN(t.Context(), host, []uint32{42}, nil); err != nil {
		t.Fatal(err)
	}
	if n, p := vxlanElems(t, host); n != 1 || p != 0 {
		t.Fatalf("after removing VNI 42: %d networks, %d peers; want VNI 43's only", n, p)
	}
	if err := SetVXLAN(t.Context(), host, []uint32{43}, nil); err != nil {
		t.Fatal(err)
	}
	if got := state(t, host); len(got) != 0 {
		t.Fatalf("after the last VNI: %v, want no table", got)
	}
}
