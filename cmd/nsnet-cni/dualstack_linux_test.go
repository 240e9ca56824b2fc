package main

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
)

// TestDualStack: a bridge network with an IPv4 and an IPv6 subnet gives
// each container an address of each, with both default routes, and CHECK
// verifies both; the containers reach each other over IPv6; a port
// published without a host address is published for both families.
func TestDualStack(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tdual", map[string]any{"subnets": []map[string]string{{"subnet": "10.84.0.0/24"}, {"subnet": "fd00:84::/64"}}})
	c1 := n.container("d1", map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80}}})
	c2 := n.container("d2", nil)
	r1, r2 := n.add(list, c1), n.add(list, c2)
	if len(r1.IPs) != 2 || len(r1.Routes) != 2 {
		t.Fatalf("IPs %v routes %v", r1.IPs, r1.Routes)
	}
	a6, _ := netip.AddrFromSlice(r2.IPs[1].Address.IP)
	if !a6.Is6() {
		t.Fatalf("second address %s", a6)
	}
	var err error
	for range 50 { // DAD may still hold the new address for a moment
		if err = nstest.Ping(t.Context(), c1.ns, a6); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("d1 -> d2 over IPv6: %v", err)
	}
	if err := n.cni.CheckNetworkList(t.Context(), list, c1.rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// The port is published for both families, each to the container's
	// address of that family: the host reaches it over both.
	nstest.Serve(t, c1.ns, "tcp", "[::]:80")
	for _, at := range []string{"10.84.0.1:8080", "[fd00:84::1]:8080"} {
		if _, err := nstest.Exchange(t.Context(), host, "tcp", at, "hi"); err != nil {
			t.Errorf("host -> %s: %v", at, err)
		}
	}
}
