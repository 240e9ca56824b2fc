package overlay_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/overlay"
	"github.com/nsnet/nsnet/veth"
)

// TestGC: a host's GC removes its endpoints that are not live (record,
// host veth, allocation), a veth a killed Attach left unmarked, and the
// devices and ingress filter of a network that is no longer defined; it
// keeps its live endpoints working, and touches nothing of the other
// host's (its endpoints, a claim of an attach under way there), nor the
// links of the bridge driver on the same host. And bridge's GC leaves the
// overlay's links alone.
func TestGC(t *testing.T) {
	t.Parallel()
	store := ipam.NewMemoryStore()
	c := newCluster(t, 2, store)
	h1, host1 := c.hosts[0], c.topo.Hosts[0].NS
	for _, cfg := range []overlay.Config{
		{Name: "ov", VNI: 0xa0, Subnets: subnets("10.91.0.0/24"), Internal: true},
		{Name: "gone", VNI: 0xa1, Subnets: subnets("10.92.0.0/24"), Internal: true},
	} {
		if _, err := h1.Create(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	_, a1 := c.attach(t, 0, "ov", "keep")
	c.attach(t, 0, "ov", "drop")
	c2, _ := c.attach(t, 1, "ov", "c2")
	eventually(t, "c2 reaches keep", func() error { return nstest.Ping(t.Context(), c2, a1) })
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// host2 is attaching c3 meanwhile: its claim and its allocation.
	if _, err := store.CAS(t.Context(), ipam.Op{Key: "overlay/ep/ov/host2/c3", Value: []byte(`{"host":"host2","pending":true}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := alloc.Allocate(t.Context(), "overlay.ov", "c3"); err != nil {
		t.Fatal(err)
	}
	// A bridge network of the same host, with an endpoint.
	balloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bn, err := bridge.New(t.Context(), host1, balloc, bridge.Config{Name: "br", Subnets: subnets("10.93.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bn.Delete(context.Background(), true) })
	bctr := nstest.Container(t, host1)
	if _, err := bn.Attach(t.Context(), bridge.EndpointConfig{ID: "b1", NS: bctr}); err != nil {
		t.Fatal(err)
	}
	// "gone" goes while host1's process is down: its devices stay.
	h1.Crash()
	if err := c.hosts[1].Delete(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	h1b, err := overlay.Join(t.Context(), overlay.HostConfig{NS: host1, Name: "host1",
		VTEP: c.topo.Hosts[0].Addr.Addr(), Store: store, Alloc: alloc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h1b.Close(context.Background()) })
	if !slices.Contains(nstest.LinkNames(t, host1), "ovvxa1") {
		t.Fatal("the restarted host removed the devices of the deleted network by itself: the test shows nothing")
	}
	// A veth of the overlay driver that a killed attach left unmarked.
	half := nstest.Container(t, host1)
	if _, err := veth.Pair(t.Context(), host1, veth.Config{Name: "vethhalf", Group: 0x6f000001,
		Peer: veth.End{NS: half, Name: "eth0"}}); err != nil {
		t.Fatal(err)
	}

	got, err := h1b.GC(t.Context(), overlay.Live{Endpoints: []overlay.LiveEndpoint{{Network: "ov", ID: "keep"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Endpoints, []string{"ov/drop"}) {
		t.Errorf("GC collected endpoints %v, want ov/drop", got.Endpoints)
	}
	if !slices.Equal(got.Filters, []uint32{0xa1}) {
		t.Errorf("GC collected the filters of %v, want VNI 0xa1's", got.Filters)
	}
	links := nstest.LinkNames(t, host1)
	for _, l := range []string{"ovvxa1", "ovbra1", "vethhalf"} {
		if slices.Contains(links, l) {
			t.Errorf("GC left %s: %v", l, links)
		}
	}
	for _, l := range []string{"ovvxa0", "ovbra0", bn.Config().Bridge} {
		if !slices.Contains(links, l) {
			t.Errorf("GC removed %s: %v", l, links)
		}
	}
	if err := bn.CheckEndpoint(t.Context(), "b1", bctr); err != nil {
		t.Errorf("the bridge network's endpoint after the overlay's GC: %v", err)
	}
	kvs, _, err := store.List(t.Context(), "overlay/ep/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, strings.TrimPrefix(kv.Key, "overlay/ep/"))
	}
	if want := []string{"ov/host1/keep", "ov/host2/c2", "ov/host2/c3"}; !slices.Equal(keys, want) {
		t.Errorf("records after GC: %v, want %v", keys, want)
	}
	_, allocs, err := alloc.Inspect(t.Context(), "overlay.ov")
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, a := range allocs {
		owners = append(owners, a.Owner)
	}
	if want := []string{"c2", "c3", "keep"}; !slices.Equal(owners, want) {
		t.Errorf("allocations after GC: %v, want %v", owners, want)
	}
	n, err := h1b.Network(t.Context(), "ov")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Check(t.Context()); err != nil {
		t.Errorf("Check after GC: %v", err)
	}
	eventually(t, "c2 reaches keep after GC", func() error { return nstest.Ping(t.Context(), c2, a1) })

	// bridge's GC, with only its own network live, leaves the overlay's
	// links alone.
	if _, err := bridge.GC(t.Context(), host1, balloc, bridge.Live{Networks: []string{"br"},
		Endpoints: []bridge.LiveEndpoint{{Network: "br", ID: "b1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(t.Context()); err != nil {
		t.Errorf("Check after bridge's GC: %v", err)
	}
	var ve *overlay.ValidationError
	if err := n.CheckEndpoint(t.Context(), "keep", nil); !errors.As(err, &ve) {
		t.Errorf("CheckEndpoint with no container: %v, want a *ValidationError", err)
	}
	eventually(t, "c2 reaches keep after bridge's GC", func() error { return nstest.Ping(t.Context(), c2, a1) })
}
