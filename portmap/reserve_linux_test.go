package portmap_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

// TestReservationDrains: a connection that reaches a reservation socket
// (it went around the DNAT: here, no mapping, only the reservation) is
// closed at once, not left waiting in the listen queue; datagrams are
// read and dropped, so the socket keeps taking them; a closed Mapper stops
// holding the port.
func TestReservationDrains(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	mp := newMapper(t, host, portmap.Config{})
	ctr := netip.MustParseAddr("10.1.2.3")
	for _, proto := range []string{"tcp", "udp"} {
		if err := mp.Reserve(portmap.Mapping{Proto: proto, HostPort: 9300, CtrAddr: ctr, CtrPort: 80}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 { // more than the listen queue holds
		err := host.Do(func() error {
			c, err := net.DialTimeout("tcp4", "127.0.0.1:9300", 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			return err
		})
		if err != io.EOF {
			t.Fatalf("connection %d to a reserved port: %v, want EOF (closed by the Mapper)", i, err)
		}
	}
	err := host.Do(func() error {
		c, err := net.Dial("udp4", "127.0.0.1:9300")
		if err != nil {
			return err
		}
		defer c.Close()
		for range 2000 {
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The datagrams are read: the socket's queue empties.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		q := rxQueue(t, host, 9300)
		if q == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the UDP reservation's receive queue holds %d bytes, want it read", q)
		}
	}
	if err := mp.Close(); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"tcp4", "udp4"} {
		err := host.Do(func() error {
			if proto == "tcp4" {
				l, err := net.Listen(proto, "0.0.0.0:9300")
				if err == nil {
					l.Close()
				}
				return err
			}
			c, err := net.ListenPacket(proto, "0.0.0.0:9300")
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			t.Errorf("%s port 9300 after Close: %v, want it free", proto, err)
		}
	}
}

// rxQueue returns the receive queue of the UDP socket of host on port, from
// /proc/net/udp as the host namespace shows it.
func rxQueue(t *testing.T, host *netns.NS, port int) int64 {
	t.Helper()
	var q int64 = -1
	err := host.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/udp")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 5 || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
				continue
			}
			_, rx, _ := strings.Cut(f[4], ":")
			q, err = strconv.ParseInt(rx, 16, 64)
			return err
		}
		return fmt.Errorf("no UDP socket on port %d", port)
	})
	if err != nil {
		t.Fatal(err)
	}
	return q
}
