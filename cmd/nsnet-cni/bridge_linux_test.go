package main

import (
	"fmt"
	"net/netip"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns/nstest"
)

func addrOf(t testing.TB, r *current.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatalf("result has no IPs: %v", r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

// TestBridge: two containers on a bridge network, through libcni and the
// built binary: they reach each other and the gateway, and the outside
// through masquerade (the outside sees the host's address); CHECK passes;
// DEL takes each away, twice.
func TestBridge(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	n := newNode(t, host)
	list := n.netList("tbridge", map[string]any{"subnets": []map[string]string{{"subnet": "10.91.0.0/24"}}})

	c1, c2 := n.container("ctr1", nil), n.container("ctr2", nil)
	r1, r2 := n.add(list, c1), n.add(list, c2)
	a1, a2 := addrOf(t, r1), addrOf(t, r2)
	if a1 != netip.MustParseAddr("10.91.0.2") || a2 != netip.MustParseAddr("10.91.0.3") {
		t.Errorf("addresses %s %s, want 10.91.0.2 and .3", a1, a2)
	}
	if len(r1.Interfaces) != 2 || r1.Interfaces[1].Name != "eth0" || r1.Interfaces[1].Sandbox != c1.rt.NetNS {
		t.Errorf("interfaces %v", r1.Interfaces)
	}
	if len(r1.Routes) != 1 || r1.Routes[0].GW.String() != "10.91.0.1" {
		t.Errorf("routes %v", r1.Routes)
	}
	ctx := t.Context()
	if err := nstest.Ping(ctx, c1.ns, a2); err != nil {
		t.Errorf("ctr1 -> ctr2: %v", err)
	}
	if err := nstest.Ping(ctx, c2.ns, netip.MustParseAddr("10.91.0.1")); err != nil {
		t.Errorf("ctr2 -> gateway: %v", err)
	}
	if err := check.Exchange(ctx, c1.ns, c2.ns, fmt.Sprintf("%s:5000", a2), a1.String()); err != nil {
		t.Errorf("TCP ctr1 -> ctr2: %v", err)
	}
	if err := check.Exchange(ctx, c1.ns, out.NS, out.Addr.String()+":80", out.HostAddr.Addr().String()); err != nil {
		t.Errorf("ctr1 -> outside, masqueraded: %v", err)
	}
	if err := n.cni.CheckNetworkList(ctx, list, c1.rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	n.del(list, c1)
	n.del(list, c1) // DEL twice
	if names := nstest.LinkNames(t, c1.ns); len(names) != 1 {
		t.Errorf("ctr1 after DEL: links %v, want lo only", names)
	}
	if err := nstest.Ping(ctx, c2.ns, a1); err == nil {
		t.Errorf("ctr2 still reaches ctr1's old address")
	}
	// A new container gets the next address, not the one just freed.
	c3 := n.container("ctr3", nil)
	if a := addrOf(t, n.add(list, c3)); a != netip.MustParseAddr("10.91.0.4") {
		t.Errorf("ctr3 got %s, want 10.91.0.4", a)
	}
	n.del(list, c2)
	n.del(list, c3)
}
