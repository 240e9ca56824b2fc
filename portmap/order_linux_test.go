package portmap_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestPublishUDPRace: a datagram that a client sends while Add is between
// its steps (here, once its conntrack cleanup is done) must not leave an
// entry that keeps the client's later datagrams from the container. The
// elements go in before the cleanup, so that such a packet meets the DNAT;
// with the cleanup first, it made a stale entry to the host again.
func TestPublishUDPRace(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.42.0.0/24")
	ctr, ctrAddr := w.container(t, a, "dns")
	nstest.Serve(t, ctr, "udp", "0.0.0.0:53")
	at := netip.AddrPortFrom(w.out.HostAddr.Addr(), 5353)

	// The client: one socket, one source port, throughout.
	var c net.Conn
	err := w.out.NS.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", &net.UDPAddr{Port: 40123}, net.UDPAddrFromAddrPort(at))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	steps := 0
	w.mp.SetStep(func(s string) {
		if s == "conntrack" {
			steps++
			c.Write([]byte("early"))
			waitEntry(t, w.host, 40123) // the packet is through the host's conntrack
		}
	})
	m := w.publish(t, portmap.Mapping{Proto: "udp", HostPort: 5353, CtrAddr: ctrAddr, CtrPort: 53, ID: "dns"})
	w.mp.SetStep(nil)
	if steps != 1 {
		t.Fatalf("the conntrack step was reached %d times, want 1", steps)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		if _, err := c.Read(make([]byte, 512)); err != nil {
			break // drop the answer to "early", if any
		}
	}
	if _, err := c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 512)); err != nil {
		t.Errorf("%s: the client's datagram after Add did not reach the container: %v", m, err)
	}
}

// waitEntry waits until host's conntrack table has a UDP entry from
// source port sport.
func waitEntry(t *testing.T, host *netns.NS, sport uint16) {
	h, err := host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.SrcPort == sport {
				return
			}
		}
	}
	t.Fatalf("no conntrack entry from port %d", sport)
}
