//go:build linux

package nstest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// DefaultTimeout bounds how long Ping and Exchange wait for an answer, or
// the context's deadline if that comes sooner.
const DefaultTimeout = 2 * time.Second

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, DefaultTimeout)
}

// Ping sends one ICMP echo request from ns to dst (IPv4 or IPv6) and waits
// for the matching reply, through a raw ICMP socket opened in ns
// (golang.org/x/net/icmp), so no ping binary is needed. It returns nil when
// the reply came, and an error when none came within DefaultTimeout (or
// before ctx's deadline, if sooner): assert on it either way.
func Ping(ctx context.Context, ns *netns.NS, dst netip.Addr) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() && !dst.Is4In6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	dst = dst.Unmap()
	var c *icmp.PacketConn
	if err := ns.Do(func() (err error) {
		c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, ns, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()

	var idb [4]byte
	rand.Read(idb[:])
	id, seq := int(binary.BigEndian.Uint16(idb[:2])), int(binary.BigEndian.Uint16(idb[2:]))
	payload := []byte("nstest ping " + dst.String())
	msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, ns, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ping %s from %s: no reply: %w", dst, ns, ctx.Err())
			}
			return fmt.Errorf("ping %s from %s: %w", dst, ns, err)
		}
		// A raw socket sees every ICMP packet of the namespace: keep only
		// our reply, from dst, with our ID and sequence number.
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || echo.ID != id || echo.Seq != seq || string(echo.Data) != string(payload) {
			continue
		}
		if ip, ok := from.(*net.IPAddr); ok {
			if a, ok := netip.AddrFromSlice(ip.IP); ok && a.Unmap() == dst {
				return nil
			}
		}
	}
}

// Server is an echo server that Serve started in a namespace. Each reply
// starts with the address the server saw the client come from, so a test
// can tell whether it was NATed.
type Server struct {
	// Addr is where the server listens.
	Addr netip.AddrPort

	closeFn func()
}

// Close stops the server and waits for its goroutines. Serve's cleanup
// calls it; calling it earlier (to show that traffic stops) is fine, and so
// is calling it twice.
func (s *Server) Close() { s.closeFn() }

// Serve starts an echo server in ns on network ("tcp", "tcp4", "tcp6",
// "udp", "udp4", "udp6") and address ("0.0.0.0:80", "[::]:0", ...). For
// every TCP connection or UDP datagram it answers "peer ADDR:PORT\n"
// followed by what the client sent (for TCP, until the client closed its
// side). The server is stopped at cleanup.
func Serve(t testing.TB, ns *netns.NS, network, address string) *Server {
	t.Helper()
	s, err := NewServer(ns, network, address)
	if err != nil {
		t.Fatalf("nstest.Serve: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// NewServer is Serve for programs that are not tests (the examples): the
// caller must Close the server.
func NewServer(ns *netns.NS, network, address string) (*Server, error) {
	var wg sync.WaitGroup
	var closer io.Closer
	var local net.Addr
	switch {
	case strings.HasPrefix(network, "tcp"):
		l, err := ns.Listen(network, address)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s in %s: %w", network, address, ns, err)
		}
		closer, local = l, l.Addr()
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					data, _ := io.ReadAll(c)
					fmt.Fprintf(c, "peer %s\n%s", c.RemoteAddr(), data)
				})
			}
		})
	case strings.HasPrefix(network, "udp"):
		pc, err := ns.ListenPacket(network, address)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s in %s: %w", network, address, ns, err)
		}
		closer, local = pc, pc.LocalAddr()
		wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				reply := fmt.Appendf(nil, "peer %s\n%s", from, buf[:n])
				pc.WriteTo(reply, from)
			}
		})
	default:
		return nil, fmt.Errorf("unknown network %q", network)
	}
	var once sync.Once
	return &Server{
		Addr: netip.MustParseAddrPort(local.String()),
		closeFn: func() {
			once.Do(func() {
				closer.Close()
				wg.Wait()
			})
		},
	}, nil
}

// Reply is what an echo server of Serve answered.
type Reply struct {
	// Peer is the address the server saw the client come from.
	Peer netip.AddrPort
	// Data is what it echoed back.
	Data string
}

// Exchange sends msg from ns to an echo server (see Serve) at address over
// network ("tcp" or "udp" and their 4/6 forms) and returns its reply. It
// fails when nothing answers within DefaultTimeout (or before ctx's
// deadline, if sooner), or when the connection is refused or unreachable.
func Exchange(ctx context.Context, ns *netns.NS, network, address, msg string) (Reply, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	c, err := ns.Dial(ctx, nil, network, address)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return Reply{}, err
	}
	var raw []byte
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		raw, err = io.ReadAll(c)
	} else {
		buf := make([]byte, 65536)
		var n int
		n, err = c.Read(buf)
		raw = buf[:n]
	}
	if err != nil {
		return Reply{}, fmt.Errorf("exchange with %s %s from %s: %w", network, address, ns, err)
	}
	return parseReply(raw)
}

func parseReply(raw []byte) (Reply, error) {
	r := bufio.NewReader(strings.NewReader(string(raw)))
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "peer ") {
		return Reply{}, errors.New("nstest: not an echo server reply: " + string(raw))
	}
	peer, err := netip.ParseAddrPort(strings.TrimSpace(strings.TrimPrefix(line, "peer ")))
	if err != nil {
		return Reply{}, err
	}
	rest, _ := io.ReadAll(r)
	return Reply{Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), Data: string(rest)}, nil
}
