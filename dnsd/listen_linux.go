package dnsd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
)

// A Listener is one UDP and one TCP socket the server answers on.
type Listener struct {
	s       *Server
	addr    netip.AddrPort
	udp     *net.UDPConn
	tcp     net.Listener
	clients []netip.Addr // fixed client identity (container listener), or nil
	ns      *netns.NS
	redir   []nft.Mapping
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	conns   chan struct{}
	once    sync.Once
	err     error

	// Interface names by index and the namespace's own addresses, in ns,
	// read by the UDP readers without a lock; updated under mu.
	ifnames atomic.Pointer[map[int]string]
	locals  atomic.Pointer[localAddrs]
	mu      sync.Mutex
}

type localAddrs struct {
	at    time.Time
	addrs map[netip.Addr]bool
}

// Addr returns the address and port the listener's sockets are bound to.
func (l *Listener) Addr() netip.AddrPort {
	if l == nil {
		return netip.AddrPort{}
	}
	return l.addr
}

// ListenHost serves DNS on addr (a network's gateway address) in the host
// namespace host, over UDP and TCP, as Podman's aardvark-dns does; clients
// are told apart by their source addresses. A port other than 53 (0 picks
// a free one) gets a redirect from addr:53 to it in nsnet's nftables table
// of host, for hosts where port 53 is taken (a dnsmasq on the host):
// clients still use addr:53. ctx bounds the setup; the listener serves
// until Close (its own or the Server's).
func (s *Server) ListenHost(ctx context.Context, host *netns.NS, addr netip.AddrPort) (*Listener, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	if ctx == nil {
		return nil, invalid("ctx", "nil context")
	}
	if host == nil {
		return nil, invalid("host", "nil namespace")
	}
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		return nil, invalid("addr", "invalid address")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dnsd: listen %s: %w", addr, err)
	}
	return s.listen(ctx, host, addr, nil)
}

// ListenContainer serves DNS on 127.0.0.11:53 inside the container's
// namespace ctr, as Docker's embedded resolver does. Every query on it is
// treated as coming from the container's addresses addrs (its addresses on
// its networks), which decide the networks whose names it gets. Forwarded
// queries still leave from the server's host namespace. If port 53 is taken
// in ctr, the server listens on a free port and redirects 127.0.0.11:53 to
// it in ctr.
func (s *Server) ListenContainer(ctx context.Context, ctr *netns.NS, addrs []netip.Addr) (*Listener, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	if ctx == nil {
		return nil, invalid("ctx", "nil context")
	}
	if ctr == nil {
		return nil, invalid("ctr", "nil namespace")
	}
	if len(addrs) == 0 {
		return nil, invalid("addrs", "the container has no address")
	}
	for i, a := range addrs {
		if !a.IsValid() {
			return nil, invalid(fmt.Sprintf("addrs[%d]", i), "invalid address")
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dnsd: listen in %s: %w", ctr, err)
	}
	a := netip.MustParseAddr(DefaultContainerDNS)
	l, err := s.listen(ctx, ctr, netip.AddrPortFrom(a, 53), addrs)
	if errors.Is(err, unix.EADDRINUSE) {
		l, err = s.listen(ctx, ctr, netip.AddrPortFrom(a, 0), addrs)
	}
	return l, err
}

func (s *Server) listen(ctx context.Context, ns *netns.NS, addr netip.AddrPort, clients []netip.Addr) (_ *Listener, err error) {
	if err := s.checkLoop(ns, addr); err != nil {
		return nil, err
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	l := &Listener{s: s, ns: ns, clients: clients, conns: make(chan struct{}, s.cfg.MaxTCPConns)}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	// A free port for both: take UDP's, and retry if TCP's is taken.
	for try := 0; ; try++ {
		pc, err := ns.ListenPacket("udp", addr.String())
		if err != nil {
			return nil, fmt.Errorf("dnsd: listen udp %s: %w", addr, err)
		}
		l.udp = pc.(*net.UDPConn)
		bound := l.udp.LocalAddr().(*net.UDPAddr).AddrPort()
		l.addr = netip.AddrPortFrom(addr.Addr(), bound.Port())
		if err := setPktinfo(l.udp, l.addr.Addr().Is4()); err != nil {
			l.udp.Close()
			l.udp = nil
			return nil, fmt.Errorf("dnsd: listen udp %s: %w", addr, err)
		}
		l.tcp, err = ns.Listen("tcp", l.addr.String())
		if err == nil {
			break
		}
		l.udp.Close()
		l.udp = nil
		if addr.Port() != 0 || try == 10 {
			return nil, fmt.Errorf("dnsd: listen tcp %s: %w", l.addr, err)
		}
	}
	if l.addr.Port() != 53 {
		for _, p := range []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			l.redir = append(l.redir, nft.Mapping{Proto: p, HostAddr: l.addr.Addr(), HostPort: 53,
				CtrAddr: l.addr.Addr(), CtrPort: l.addr.Port(), ID: "nsnet-dns"})
		}
		if err := nft.AddMappings(ctx, ns, l.redir); err != nil {
			l.redir = nil
			return nil, fmt.Errorf("dnsd: redirect %s:53 to port %d: %w", l.addr.Addr(), l.addr.Port(), err)
		}
	}
	l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	for range s.cfg.UDPReaders {
		l.wg.Add(1)
		go l.serveUDP()
	}
	l.wg.Add(1)
	go l.serveTCP()
	return l, nil
}

// checkLoop refuses a listener that an upstream is: forwarded queries
// leave from the server's host namespace, so a listener there on an
// upstream's address, on the upstream's port or on 53 (which a redirect
// may send to it), would forward to itself in a loop.
func (s *Server) checkLoop(ns *netns.NS, addr netip.AddrPort) error {
	if s.cfg.NS == nil || !ns.Equal(s.cfg.NS) {
		return nil
	}
	for i, u := range s.cfg.Upstreams {
		if u.Addr().Unmap() == addr.Addr().Unmap() && (u.Port() == 53 || u.Port() == addr.Port()) {
			return invalid("addr", fmt.Sprintf("%s is Config.Upstreams[%d]: the server would forward to itself", addr.Addr(), i))
		}
	}
	return nil
}

// Close stops the listener, waits for its goroutines and removes its
// redirect. It may be called more than once.
func (l *Listener) Close() error {
	if l == nil || l.s == nil {
		return nil
	}
	l.once.Do(func() {
		if l.cancel != nil {
			l.cancel()
		}
		var errs []error
		if l.udp != nil {
			l.udp.Close()
		}
		if l.tcp != nil {
			l.tcp.Close()
		}
		l.wg.Wait()
		if len(l.redir) > 0 {
			errs = append(errs, nft.RemoveMappings(context.Background(), l.ns, l.redir))
		}
		l.s.mu.Lock()
		delete(l.s.listeners, l)
		l.s.mu.Unlock()
		l.err = errors.Join(errs...)
	})
	return l.err
}

func (l *Listener) serveUDP() {
	defer l.wg.Done()
	buf := make([]byte, 65535)
	oob := make([]byte, 128)
	var one [1]netip.Addr
	for {
		n, oobn, _, from, err := l.udp.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		one[0] = from.Addr().Unmap()
		w := l.who(one[:], pktinfoIfindex(oob[:oobn]))
		l.s.serve(l.ctx, buf[:n], w, true, func(out []byte) { l.udp.WriteToUDPAddrPort(out, from) }, true)
	}
}

// loopback is the index of lo in every namespace.
const loopback = 1

// who says who a query from src that arrived on the interface ifindex is.
// A container listener's client is the container, whose queries arrive
// over loopback; a ListenHost listener's is its source address on the
// networks of the interface (the host itself, over loopback, only with
// Config.AnswerHost).
func (l *Listener) who(src []netip.Addr, ifindex int) who {
	switch {
	case l.clients != nil && ifindex == loopback:
		return who{addrs: l.clients}
	case l.clients != nil:
		return who{check: true} // nobody
	case ifindex <= 0:
		return who{check: true}
	case l.isLocal(src[0]):
		// The host itself: only it can send from its own addresses (the
		// kernel drops such packets from outside as martians). Its
		// queries come in "on" the interface of the address they are
		// sent to, so only the source tells.
		if l.s.cfg.AnswerHost {
			return who{addrs: src}
		}
		return who{check: true}
	}
	return who{addrs: src, iface: l.ifname(ifindex), check: true}
}

// isLocal reports whether a is an address of the listener's namespace.
// The addresses are read again when a second has passed since the last
// read.
func (l *Listener) isLocal(a netip.Addr) bool {
	if la := l.locals.Load(); la != nil && time.Since(la.at) < time.Second {
		return la.addrs[a]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	la := l.locals.Load()
	if la == nil || time.Since(la.at) >= time.Second {
		la = &localAddrs{at: time.Now(), addrs: map[netip.Addr]bool{}}
		addrs, err := l.ns.Addrs(nil, unix.AF_UNSPEC)
		if err != nil {
			l.s.log.Debug("dnsd: local addresses", "err", err)
		}
		for _, na := range addrs {
			if a, ok := netip.AddrFromSlice(na.IP); ok {
				la.addrs[a.Unmap()] = true
			}
		}
		l.locals.Store(la)
	}
	return la.addrs[a] || a.IsLoopback()
}

// ifname returns the name of the interface ifindex in the listener's
// namespace, "" if there is none. Names are looked up once per index (the
// kernel does not hand an index out again soon: it allocates them
// cyclically).
func (l *Listener) ifname(ifindex int) string {
	if m := l.ifnames.Load(); m != nil {
		if name, ok := (*m)[ifindex]; ok {
			return name
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := map[int]string{}
	if m := l.ifnames.Load(); m != nil {
		old = *m
	}
	if name, ok := old[ifindex]; ok {
		return name
	}
	var name string
	err := l.ns.Do(func() error {
		ifi, err := net.InterfaceByIndex(ifindex)
		if err == nil {
			name = ifi.Name
		}
		return err
	})
	if err != nil {
		l.s.log.Debug("dnsd: interface of a query", "ifindex", ifindex, "err", err)
		return ""
	}
	m := make(map[int]string, len(old)+1)
	maps.Copy(m, old)
	m[ifindex] = name
	l.ifnames.Store(&m)
	return name
}

func (l *Listener) serveTCP() {
	defer l.wg.Done()
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case l.conns <- struct{}{}:
		default:
			l.s.stats.tcpRejected.Add(1)
			c.Close()
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.conns }()
			l.serveConn(c)
		}()
	}
}

// serveConn answers queries on one TCP connection. Each query must arrive
// whole, and each answer be taken, within TCPIdle; the connection closes on
// any error, EOF (half-close included) or listener close.
func (l *Listener) serveConn(c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(l.ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return
	}
	w := l.who([]netip.Addr{ra.AddrPort().Addr().Unmap()}, connIfindex(c, l.addr.Addr().Is4()))
	var hdr [2]byte
	for {
		c.SetDeadline(time.Now().Add(l.s.cfg.TCPIdle))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint16(hdr[:])
		if n == 0 {
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		var out []byte
		l.s.serve(l.ctx, b, w, false, func(b []byte) { out = b }, false)
		if out == nil {
			return
		}
		msg := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(msg, uint16(len(out)))
		copy(msg[2:], out)
		if _, err := c.Write(msg); err != nil {
			return
		}
	}
}
