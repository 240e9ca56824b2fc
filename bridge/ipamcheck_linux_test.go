package bridge

import (
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
)

// TestStoreReset: after the IPAM store was lost, an attach is not handed an
// address that a live container still holds (the kernel tells), and the
// holder's allocation is made again.
func TestStoreReset(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	cfg := Config{Name: "reset", Subnets: append(subnet("10.45.0.0/24", ""), subnet("fd00:45::/64", "")...)}
	n := newNet(t, host, newAlloc(t), cfg)
	c1, e1 := attach(t, n, "c1", EndpointConfig{})

	// A fresh store: New repairs the network (its pool made again).
	fresh := newAlloc(t)
	m, err := New(t.Context(), host, fresh, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c2, e2 := attach(t, m, "c2", EndpointConfig{})
	for _, a := range e2.Addrs {
		for _, b := range e1.Addrs {
			if a.Addr() == b.Addr() {
				t.Fatalf("c2 was handed %s, which c1 holds", a)
			}
		}
	}
	if got := held(t, m, "c1"); len(got) != 1 || len(got[0].Leases()) != 2 {
		t.Errorf("c1's allocation in the fresh store: %+v, want its two addresses", got)
	}
	mustPing(t, "c2 to c1", c2, e1.Addrs[0].Addr())
	mustPing(t, "c1 to c2", c1, e2.Addrs[0].Addr())
	mustPing(t, "c2 to c1 over IPv6", c2, e1.Addrs[1].Addr())
}
