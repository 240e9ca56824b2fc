package check

import (
	"context"
	"fmt"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
	"github.com/vishvananda/netlink"
)

// AddAddr adds an address to a link, like `ip addr add CIDR dev LINK`.
func AddAddr(l veth.Link, cidr string) error {
	h, err := l.NS.Netlink()
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: l.Index}}, a); err != nil {
		return fmt.Errorf("ip addr add %s dev %s: %w", cidr, l.Name, err)
	}
	return nil
}

// Exchange runs an echo server in to at addr and talks to it over TCP from
// from; the server must see the client's address as wantPeer.
func Exchange(ctx context.Context, from, to *netns.NS, addr, wantPeer string) error {
	srv, err := nstest.NewServer(to, "tcp", addr)
	if err != nil {
		return err
	}
	defer srv.Close()
	r, err := nstest.Exchange(ctx, from, "tcp", addr, "hello")
	if err != nil {
		return err
	}
	if r.Data != "hello" || r.Peer.Addr().String() != wantPeer {
		return fmt.Errorf("reply %q from peer %s, want hello from %s", r.Data, r.Peer, wantPeer)
	}
	return nil
}
