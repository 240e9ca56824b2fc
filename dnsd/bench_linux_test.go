package dnsd_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// BenchmarkQuery measures queries per second and latency (p50, p99) of
// queries from containers to the gateway listener, over UDP, with
// concurrent clients (RunParallel with 4×GOMAXPROCS goroutines, each with
// its own socket in a container namespace), for local names with 10 and
// 10,000 registered names, and for forwarded names (an upstream in an
// outside namespace, newFastUpstream in this process). qps is b.N over
// the wall time of the run; cpu-µs/q is the CPU time (user and system) of
// the process (clients, server, upstream, and the kernel's work done on
// their behalf) per query, which the machine's load changes less than
// qps: on an idle machine of n cores, about n/cpu-µs/q million queries per
// second is the most the run can reach. upstream-alone is the clients
// asking the upstream themselves, through the host: what the upstream and
// the path cost without dnsd.
//
//	sudo go test -run '^$' -bench Query -benchtime 3s ./dnsd/
func BenchmarkQuery(b *testing.B) {
	for _, bc := range []struct {
		name  string
		names int
		qname string
	}{
		{"local/names=10", 10, "n7."},
		{"local/names=10000", 10000, "n7777."},
		{"forwarded/names=100", 100, "ext.example."},
		{"forwarded/names=10000", 10000, "ext.example."},
		{"upstream-alone", 100, "ext.example."},
	} {
		b.Run(bc.name, func(b *testing.B) {
			host := nstest.Host(b)
			out := nstest.NewOutside(b, host)
			up := newFastUpstream(b, out.NS, out.Addr)
			l := newLabOn(b, host, dnsd.Config{Upstreams: []netip.AddrPort{up.addr}})
			srv := l.srv
			na, gw := l.network("neta", "172.30.0.0/16", false)
			c1, _ := l.container(na, nil, "c1")
			for i := range bc.names {
				a := netip.AddrFrom4([4]byte{172, 30, byte(1 + i/250), byte(1 + i%250)})
				if err := srv.Register("neta", dnsd.Endpoint{Name: fmt.Sprintf("n%d", i), Addrs: []netip.Addr{a}}); err != nil {
					b.Fatal(err)
				}
			}
			server := netip.AddrPortFrom(gw, 53).String()
			if bc.name == "upstream-alone" {
				// The clients ask the upstream themselves, through the
				// host: what the upstream and the path cost without dnsd.
				ch, err := c1.Netlink()
				if err != nil {
					b.Fatal(err)
				}
				if err := ch.RouteAdd(&netlink.Route{Dst: ipnet.From(netip.PrefixFrom(up.addr.Addr(), 32)), Gw: gw.AsSlice()}); err != nil {
					b.Fatal(err)
				}
				if err := nat.Masquerade(b.Context(), host, nat.Network{Bridge: na.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16")}}); err != nil {
					b.Fatal(err)
				}
				server = up.addr.String()
			}
			q := new(dns.Msg)
			q.SetQuestion(bc.qname, dns.TypeA)
			var mu sync.Mutex
			var lat []time.Duration
			b.ReportAllocs()
			b.SetParallelism(4)
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				c, err := c1.Dial(b.Context(), nil, "udp", server)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				msg, _ := q.Pack()
				buf := make([]byte, 1500)
				var mine []time.Duration
				var id uint16
				for pb.Next() {
					id++
					msg[0], msg[1] = byte(id>>8), byte(id)
					t0 := time.Now()
					c.SetDeadline(t0.Add(2 * time.Second))
					if _, err := c.Write(msg); err != nil {
						b.Error(err)
						return
					}
					for {
						n, err := c.Read(buf)
						if err != nil {
							b.Error(err)
							return
						}
						if n >= 12 && buf[0] == msg[0] && buf[1] == msg[1] {
							if buf[3]&0xf != 0 {
								b.Errorf("rcode %d", buf[3]&0xf)
								return
							}
							break
						}
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			el := time.Since(start)
			cpu := cpuTime() - cpu0
			b.StopTimer()
			if len(lat) == 0 {
				return
			}
			slices.Sort(lat)
			b.ReportMetric(float64(len(lat))/el.Seconds(), "qps")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(cpu.Microseconds())/float64(len(lat)), "cpu-µs/q")
		})
	}
}

// newFastUpstream is an upstream for benchmarks that answers every query
// for ext.example. with one A record, 203.0.113.7, from two goroutines
// reading one UDP socket in ns, and needs little CPU for it (no unpacking,
// no goroutine per query, one read and one write): on the benchmark's
// machine, whose cores the clients and the server share with it, the
// figure is the server's, as with an upstream elsewhere. Other queries
// are not answered.
func newFastUpstream(b *testing.B, ns *netns.NS, addr netip.Addr) *upstream {
	b.Helper()
	pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pc.Close() })
	u := &upstream{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	c := pc.(*net.UDPConn)
	q := new(dns.Msg)
	q.SetQuestion("ext.example.", dns.TypeA)
	qwire, _ := q.Pack()
	question := qwire[12:] // the name, type and class
	rr := []byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4}
	rr = append(rr, extAddr.AsSlice()...)
	for range 2 {
		go func() {
			buf := make([]byte, 1500)
			out := make([]byte, 0, 1500)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				// One question, ext.example. A IN, maybe an OPT record.
				qend := 12 + len(question)
				if n < qend || buf[2]&0x80 != 0 || buf[5] != 1 || buf[7] != 0 || !bytes.EqualFold(buf[12:qend], question) {
					continue
				}
				out = append(out[:0], buf[:qend]...)
				out[2] |= 0x80 // QR
				out[3] = 0x80  // RA, NOERROR
				out[7] = 1     // ANCOUNT
				out = append(out, rr...)
				out = append(out, buf[qend:n]...) // the OPT record, if any
				c.WriteToUDPAddrPort(out, from)
				u.udp.Add(1)
			}
		}()
	}
	return u
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
