package veth

import (
	"fmt"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// BenchmarkPair creates a veth pair whose peer ends in another namespace as
// eth0 (the deletion after each one is not timed: see BenchmarkDelete), in
// the two ways there are:
//
//   - peer-in-place: what Pair does, one request with IFLA_NET_NS_FD;
//   - create-then-move: create both ends in the host under temporary names,
//     move the peer (`ip link set PEER netns NS`), rename it to eth0 there.
func BenchmarkPair(b *testing.B) {
	b.Run("peer-in-place", func(b *testing.B) {
		host := nstest.Host(b)
		ctr := nstest.Container(b, host)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Pair(b.Context(), host, Config{Name: "nsbench", Peer: End{NS: ctr, Name: "eth0"}, Up: true}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := Delete(b.Context(), host, "nsbench"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("create-then-move", func(b *testing.B) {
		host := nstest.Host(b)
		ctr := nstest.Container(b, host)
		b.ReportAllocs()
		for b.Loop() {
			if err := pairByMove(host, ctr, "nsbench", "eth0"); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := Delete(b.Context(), host, "nsbench"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// BenchmarkDelete deletes a pair whose peer is in another namespace (the
// creation is not timed). The kernel waits for RCU grace periods when it
// unregisters a device, which is most of this time.
func BenchmarkDelete(b *testing.B) {
	host := nstest.Host(b)
	ctr := nstest.Container(b, host)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if _, err := Pair(b.Context(), host, Config{Name: "nsbench", Peer: End{NS: ctr, Name: "eth0"}, Up: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := Delete(b.Context(), host, "nsbench"); err != nil {
			b.Fatal(err)
		}
	}
}

// pairByMove is the slower way Pair does not take, kept here to measure it.
func pairByMove(host, ctr *netns.NS, name, peerName string) error {
	hh, err := host.Netlink()
	if err != nil {
		return err
	}
	ch, err := ctr.Netlink()
	if err != nil {
		return err
	}
	tmp := "nstmp0"
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: tmp}
	if err := hh.LinkAdd(v); err != nil {
		return err
	}
	peer, err := hh.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := hh.LinkSetNsFd(peer, ctr.Fd()); err != nil {
		return err
	}
	peer, err = ch.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := ch.LinkSetName(peer, peerName); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	if err := ch.LinkSetUp(peer); err != nil {
		return err
	}
	return hh.LinkSetUp(v)
}
