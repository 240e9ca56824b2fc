package bridge

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/ctrlink/ctrlinktest"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestAnnounceReusedAddress: a container that takes over the addresses of
// one that left is announced on the wire (gratuitous ARP, unsolicited
// neighbour advertisement), so a neighbour that cached the old MAC reaches
// the new container at once.
func TestAnnounceReusedAddress(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "garp", Subnets: append(subnet("10.21.0.0/24", ""), subnet("fd00:21::/64", "")...)})
	v4, v6 := addr("10.21.0.10"), addr("fd00:21::10")
	nb, eb := attach(t, n, "neighbour", EndpointConfig{})
	_, _ = attach(t, n, "old", EndpointConfig{Addrs: []netip.Addr{v4, v6}})
	mustPing(t, "neighbour to old over IPv4", nb, v4)
	mustPing(t, "neighbour to old over IPv6", nb, v6)

	c, err := ctrlinktest.Listen(nb, eb.IfName)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := n.Detach(t.Context(), "old"); err != nil {
		t.Fatal(err)
	}
	_, e := attach(t, n, "new", EndpointConfig{Addrs: []netip.Addr{v4, v6}})
	for _, a := range []netip.Addr{v4, v6} {
		if !c.Heard(a, e.MAC) {
			t.Errorf("the neighbour heard no announcement of %s at %s", a, e.MAC)
		}
		// The neighbour took it: its cache has the new MAC, without
		// having asked.
		if mac, err := ctrlinktest.NeighMAC(nb, a); err != nil || mac != e.MAC.String() {
			t.Errorf("the neighbour has %s at %q (%v), want %s", a, mac, err, e.MAC)
		}
	}
	mustPing(t, "neighbour to new over IPv4", nb, v4)
}
