package macvlan

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/ctrlink/ctrlinktest"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestAnnounceReusedAddress: a container that takes over the addresses of
// one that left is announced on the wire (gratuitous ARP; an unsolicited
// neighbour advertisement, which the kernel does not send by itself), so
// a neighbour that cached the old MAC reaches the new container at once.
func TestAnnounceReusedAddress(t *testing.T) {
	t.Parallel()
	host := nstest.Underlay(t, 1).Hosts[0].NS
	subnets := append(s10(), ipam.SubnetConfig{Subnet: prefix("fd00:29::/64")})
	n := newNet(t, host, newAlloc(t), Config{Name: "garp", Parent: "eth0", Subnets: subnets})
	v4, v6 := addr("172.29.0.10"), addr("fd00:29::10")
	attachDual := func(id string, addrs ...netip.Addr) Endpoint {
		t.Helper()
		e, err := n.Attach(t.Context(), EndpointConfig{ID: id, NS: nstest.Container(t, host), Addrs: addrs})
		if err != nil {
			t.Fatalf("Attach(%s): %v", id, err)
		}
		return e
	}
	eb := attachDual("neighbour", addr("172.29.0.9"), addr("fd00:29::9"))
	attachDual("old", v4, v6)
	mustPing(t, "neighbour to old over IPv4", eb.NS, v4)
	mustPing(t, "neighbour to old over IPv6", eb.NS, v6)

	c, err := ctrlinktest.Listen(eb.NS, eb.IfName)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := n.Detach(t.Context(), "old", nil); err != nil {
		t.Fatal(err)
	}
	e := attachDual("new", v4, v6)
	for _, a := range []netip.Addr{v4, v6} {
		if !c.Heard(a, e.MAC) {
			t.Errorf("the neighbour heard no announcement of %s at %s", a, e.MAC)
		}
		// The neighbour took it: its cache has the new MAC, without
		// having asked.
		if mac, err := ctrlinktest.NeighMAC(eb.NS, a); err != nil || mac != e.MAC.String() {
			t.Errorf("the neighbour has %s at %q (%v), want %s", a, mac, err, e.MAC)
		}
	}
	mustPing(t, "neighbour to new over IPv4", eb.NS, v4)
}
