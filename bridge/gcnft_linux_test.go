package bridge

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// TestGCForgetsGoneInterfaces: a bridge deleted behind nsnet's back (or by
// a process that died before taking its isolation entries out) and a host
// veth deleted the same way leave entries in nsnet's tables; GC removes
// them, keeps those of the live networks and ports, and the live networks
// stay isolated from each other.
func TestGCForgetsGoneInterfaces(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	a := newNet(t, host, alloc, Config{Name: "gca", Subnets: subnet("10.51.0.0/24", "")})
	b := newNet(t, host, alloc, Config{Name: "gcb", Subnets: subnet("10.52.0.0/24", "")})
	c := newNet(t, host, alloc, Config{Name: "gcc", Subnets: subnet("10.53.0.0/24", ""), Internal: true, DisableICC: true})
	ca, ea := attach(t, a, "c1", EndpointConfig{})
	cb, eb := attach(t, b, "c1", EndpointConfig{})
	_, gone := attach(t, a, "c2", EndpointConfig{})
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	goneVeth, err := h.LinkByName(gone.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{c.Config().Bridge, gone.HostVeth} {
		if err := h.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(isolationEntries(t, host), c.Config().Bridge) || !guarded(t, host, goneVeth.Attrs().Index) {
		t.Fatal("the setup left no entries of the gone interfaces")
	}

	if _, err := GC(t.Context(), host, alloc, Live{
		Networks:  []string{"gca", "gcb"},
		Endpoints: []LiveEndpoint{{"gca", "c1"}, {"gcb", "c1"}},
	}); err != nil {
		t.Fatal(err)
	}
	got := isolationEntries(t, host)
	slices.Sort(got)
	want := []string{a.Config().Bridge, b.Config().Bridge}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("isolation entries after GC: %v, want %v (the live networks')", got, want)
	}
	if guarded(t, host, goneVeth.Attrs().Index) {
		t.Errorf("the gone veth %s is still guarded", gone.HostVeth)
	}
	hostA, err := h.LinkByName(ea.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if !guarded(t, host, hostA.Attrs().Index) {
		t.Errorf("the live veth %s is no longer guarded", ea.HostVeth)
	}
	mustNotPing(t, "a to b after GC", ca, eb.Addrs[0].Addr())
	mustNotPing(t, "b to a after GC", cb, ea.Addrs[0].Addr())
	mustPing(t, "host to a after GC", host, ea.Addrs[0].Addr())
	// The gone network's Delete (at cleanup) succeeds.
	if err := c.Delete(context.Background(), true); err != nil {
		t.Error(err)
	}
}

// isolationEntries returns the bridge names that any isolation set of
// nsnet's inet table in ns holds (each once).
func isolationEntries(t testing.TB, ns *netns.NS) []string {
	t.Helper()
	var names []string
	err := ns.NFTables(func(c *nftables.Conn) error {
		tb := &nftables.Table{Name: nft.TableName, Family: nftables.TableFamilyINet}
		for _, name := range []string{"bridges", "internal", "same", "noicc", "masqnets4", "masqnets6"} {
			s, err := c.GetSetByName(tb, name)
			if err != nil {
				return err
			}
			elems, err := c.GetSetElements(s)
			if err != nil {
				return err
			}
			for _, e := range elems {
				if len(e.Key) >= 16 {
					if n := string(bytes.TrimRight(e.Key[:16], "\x00")); !slices.Contains(names, n) {
						names = append(names, n)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}
