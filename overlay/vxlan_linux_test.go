package overlay_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/overlay"
)

// vxlanPacket is the payload of a crafted VXLAN packet: the VXLAN header
// with vni, then an Ethernet frame to dst carrying an IPv4 UDP datagram
// from src to to:port.
func vxlanPacket(vni uint32, dst net.HardwareAddr, src, to netip.Addr, port uint16, payload string) []byte {
	b := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	b = append(b, dst...)
	b = append(b, 0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00)
	udpLen := 8 + len(payload)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], to.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	b = append(b, ip...)
	b = binary.BigEndian.AppendUint16(b, 40000)
	b = binary.BigEndian.AppendUint16(b, port)
	b = binary.BigEndian.AppendUint16(b, uint16(udpLen))
	b = append(b, 0, 0) // no checksum
	return append(b, payload...)
}

// sendVXLAN sends pkt from ns to vtep's VXLAN port, as plain UDP.
func sendVXLAN(t *testing.T, from *netns.NS, vtep netip.Addr, pkt []byte) {
	t.Helper()
	c, err := from.Dial(t.Context(), nil, "udp", netip.AddrPortFrom(vtep, overlay.DefaultPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
}

func macOf(t *testing.T, ns *netns.NS) net.HardwareAddr {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

// receiver is a UDP socket of a container, on port 9999.
type receiver struct {
	pc   net.PacketConn
	seen []string
}

func listen(t *testing.T, ns *netns.NS) *receiver {
	t.Helper()
	pc, err := ns.ListenPacket("udp", "0.0.0.0:9999")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &receiver{pc: pc}
}

// until reads until a datagram with marker comes and reports whether one
// with bad came first.
func (r *receiver) until(t *testing.T, marker, bad string) {
	t.Helper()
	buf := make([]byte, 2048)
	r.pc.SetReadDeadline(time.Now().Add(waitFor))
	for {
		n, _, err := r.pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("waiting for %q (seen %q): %v", marker, r.seen, err)
		}
		got := string(buf[:n])
		r.seen = append(r.seen, got)
		if bad != "" && strings.HasPrefix(got, bad) {
			t.Errorf("the container received %q", got)
		}
		if got == marker {
			return
		}
	}
}

func stats(t *testing.T, h *overlay.Host) overlay.Stats {
	t.Helper()
	s, err := h.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestVXLANIngress: a host takes VXLAN only from the hosts in the store
// that have endpoints on the network the VNI names: a rogue on the
// underlay, a member of another network, a container of the host (to the
// host's own port, or masqueraded to another host's) and a host whose
// record went are dropped and counted; the members' traffic flows.
func TestVXLANIngress(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 4)
	rogue := topo.Hosts[3]
	store := ipam.NewMemoryStore()
	c := joinCluster(t, &nstest.Topology{Underlay: topo.Underlay, Hosts: topo.Hosts[:3]}, func() ipam.Store { return store }, 0)
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x40, Subnets: subnets("10.75.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "other", VNI: 0x41, Subnets: subnets("10.76.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	c1, a1 := c.attach(t, 0, "ov", "c1")
	c1b, a1b := c.attach(t, 0, "other", "c1b")
	c2, a2 := c.attach(t, 1, "ov", "c2")
	_, a3 := c.attach(t, 2, "ov", "c3")
	_, a3b := c.attach(t, 2, "other", "c3b")
	for _, p := range []struct {
		from *netns.NS
		to   netip.Addr
	}{{c1, a2}, {c1, a3}, {c1b, a3b}} {
		eventually(t, fmt.Sprint("ping ", p.to), func() error { return nstest.Ping(t.Context(), p.from, p.to) })
	}
	vtep := func(i int) netip.Addr { return topo.Hosts[i].Addr.Addr() }
	r1, r1b, r2 := listen(t, c1), listen(t, c1b), listen(t, c2)
	ovSrc, otherSrc := netip.MustParseAddr("10.75.0.200"), netip.MustParseAddr("10.76.0.200")
	toC1 := func(s string) []byte { return vxlanPacket(0x40, macOf(t, c1), ovSrc, a1, 9999, s) }
	toC1b := func(s string) []byte { return vxlanPacket(0x41, macOf(t, c1b), otherSrc, a1b, 9999, s) }
	toC2 := func(s string) []byte { return vxlanPacket(0x40, macOf(t, c2), ovSrc, a2, 9999, s) }

	// A member's crafted packet is delivered: the packets are right.
	sendVXLAN(t, topo.Hosts[1].NS, vtep(0), toC1("member"))
	r1.until(t, "member", "")

	// dropped sends pkt from ns to the VXLAN port of host i, waits until
	// host i's counter has counted a drop, and has a member send a marker
	// after it.
	dropped := func(what string, from *netns.NS, i int, pkt []byte, egress bool, marker func()) {
		t.Helper()
		before := stats(t, c.hosts[0])
		to := vtep(i)
		if egress {
			to = vtep(1)
		}
		sendVXLAN(t, from, to, pkt)
		eventually(t, what+" is counted", func() error {
			s := stats(t, c.hosts[0])
			if !egress && s.VXLANDropped > before.VXLANDropped || egress && s.VXLANEgressDropped > before.VXLANEgressDropped {
				return nil
			}
			return fmt.Errorf("stats %+v", s)
		})
		marker()
	}
	dropped("a rogue on the underlay", rogue.NS, 0, toC1("rogue"), false, func() {
		sendVXLAN(t, topo.Hosts[2].NS, vtep(0), toC1("marker1"))
		r1.until(t, "marker1", "rogue")
	})
	dropped("host2 with the VNI of a network it has no endpoint on", topo.Hosts[1].NS, 0, toC1b("other vni"), false, func() {
		sendVXLAN(t, topo.Hosts[2].NS, vtep(0), toC1b("marker2"))
		r1b.until(t, "marker2", "other vni")
	})
	dropped("a container to its host's port", c1, 0, toC1b("local"), false, func() {
		sendVXLAN(t, topo.Hosts[2].NS, vtep(0), toC1b("marker3"))
		r1b.until(t, "marker3", "local")
	})
	dropped("a container masqueraded to another host", c1, 0, toC2("masqueraded"), true, func() {
		sendVXLAN(t, topo.Hosts[2].NS, vtep(1), toC2("marker4"))
		r2.until(t, "marker4", "masqueraded")
	})

	// host2 dies and its record goes: it loses access at once.
	c.hosts[1].Crash()
	kv, err := store.Get(t.Context(), "overlay/host/host2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.CAS(t.Context(), ipam.Op{Key: kv.Key, Rev: kv.Rev, Delete: true}); err != nil {
		t.Fatal(err)
	}
	before := stats(t, c.hosts[0])
	eventually(t, "host2's packets are dropped once its record is gone", func() error {
		sendVXLAN(t, topo.Hosts[1].NS, vtep(0), toC1("gone"))
		time.Sleep(10 * time.Millisecond)
		if s := stats(t, c.hosts[0]); s.VXLANDropped <= before.VXLANDropped {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	dropped("a host whose record went", topo.Hosts[1].NS, 0, toC1("gone for good"), false, func() {
		sendVXLAN(t, topo.Hosts[2].NS, vtep(0), toC1("marker5"))
		r1.until(t, "marker5", "gone for good")
	})
	if slices.Contains(r1.seen, "rogue") {
		t.Error("the rogue's packet came through")
	}
}

// TestVXLANFilterRestored: after someone flushes the ruleset, the host's
// next heartbeat puts its ingress filter back.
func TestVXLANFilterRestored(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 3)
	store := ipam.NewMemoryStore()
	c := joinCluster(t, &nstest.Topology{Underlay: topo.Underlay, Hosts: topo.Hosts[:2]}, func() ipam.Store { return store }, 300*time.Millisecond)
	if _, err := c.hosts[0].Create(t.Context(), overlay.Config{Name: "ov", VNI: 0x42, Subnets: subnets("10.84.0.0/24"), Internal: true}); err != nil {
		t.Fatal(err)
	}
	c1, a1 := c.attach(t, 0, "ov", "c1")
	_, a2 := c.attach(t, 1, "ov", "c2")
	eventually(t, "c1 pings c2", func() error { return nstest.Ping(t.Context(), c1, a2) })
	err := topo.Hosts[0].NS.NFTables(func(c *nftables.Conn) error { c.FlushRuleset(); return c.Flush() })
	if err != nil {
		t.Fatal(err)
	}
	pkt := vxlanPacket(0x42, macOf(t, c1), netip.MustParseAddr("10.84.0.200"), a1, 9999, "rogue")
	eventually(t, "the filter is back", func() error {
		sendVXLAN(t, topo.Hosts[2].NS, topo.Hosts[0].Addr.Addr(), pkt)
		time.Sleep(10 * time.Millisecond)
		if s := stats(t, c.hosts[0]); s.VXLANDropped == 0 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	eventually(t, "c1 still pings c2", func() error { return nstest.Ping(t.Context(), c1, a2) })
}
