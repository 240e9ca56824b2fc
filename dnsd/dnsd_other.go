//go:build !linux

package dnsd

import (
	"context"
	"errors"
	"net/netip"

	"github.com/nsnet/nsnet/netns"
)

// Listening and forwarding need Linux (namespaces, IP_PKTINFO, nftables).
// Elsewhere the server's names, Handle and the files work; forwarding
// answers SERVFAIL and the listeners return an error matching
// errors.ErrUnsupported.

// Listener serves DNS on one address; there is none off Linux.
type Listener struct{}

// Addr is the listener's address.
func (l *Listener) Addr() netip.AddrPort { return netip.AddrPort{} }

// Close stops the listener.
func (l *Listener) Close() error { return nil }

func (s *Server) ListenHost(ctx context.Context, host *netns.NS, addr netip.AddrPort) (*Listener, error) {
	return nil, errors.ErrUnsupported
}

func (s *Server) ListenContainer(ctx context.Context, ctr *netns.NS, addrs []netip.Addr) (*Listener, error) {
	return nil, errors.ErrUnsupported
}

type sockets struct{}

func (s *Server) stopSockets() {}

func (s *Server) startForward(x *fwd) {
	s.stats.forwardFailed.Add(1)
	x.done(nil)
}

func (s *Server) cancelForward(x *fwd) {}
