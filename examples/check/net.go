//go:build linux

package check

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

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

// Outside is a namespace standing for the world beyond the host's uplink:
// it has no route to the host's container subnets, so containers reach it
// only through NAT.
type Outside struct {
	NS *netns.NS
	// Addr is the outside's address, 198.51.100.254.
	Addr netip.Addr
	// Uplink is the host's address on its uplink "eth0", 198.51.100.1.
	Uplink netip.Addr
}

// Outside gives the host an uplink eth0 (198.51.100.1/24, default route via
// 198.51.100.254) whose other end is the outside, a new namespace; both go
// when the example ends.
func (e Env) Outside(ctx context.Context) (Outside, error) {
	out := Outside{Addr: netip.MustParseAddr("198.51.100.254"), Uplink: netip.MustParseAddr("198.51.100.1")}
	ns, err := e.Container()
	if err != nil {
		return out, err
	}
	out.NS = ns
	ends, err := veth.Pair(ctx, e.Host, veth.Config{Name: "eth0", Peer: veth.End{NS: ns, Name: "eth0"}, Up: true})
	if err != nil {
		return out, err
	}
	*e.closers = append(*e.closers, func() { veth.Delete(context.Background(), e.Host, "eth0") })
	if err := errors.Join(AddAddr(ends.Host, "198.51.100.1/24"), AddAddr(ends.Peer, "198.51.100.254/24")); err != nil {
		return out, err
	}
	h, err := e.Host.Netlink()
	if err != nil {
		return out, err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: ends.Host.Index, Gw: out.Addr.AsSlice()}); err != nil {
		return out, fmt.Errorf("ip route add default via %s: %w", out.Addr, err)
	}
	return out, nil
}

// UnderlayHost is one host of Underlay.
type UnderlayHost struct {
	NS *netns.NS
	// Addr is the host's address on its uplink eth0, 198.18.0.(i+1).
	Addr netip.Addr
}

// UnderlayGateway is the address of the underlay's bridge in the
// example's host, the hosts' default gateway: it stands for the network
// beyond them.
var UnderlayGateway = netip.MustParseAddr("198.18.0.254")

// Underlay makes n hosts on one Ethernet segment: a bridge br0 in the
// example's host (address 198.18.0.254/24), and n namespaces each with an
// uplink eth0 on it (198.18.0.(i+1)/24, default route via br0). Everything
// goes when the example ends.
func (e Env) Underlay(ctx context.Context, n int) ([]UnderlayHost, error) {
	h, err := e.Host.Netlink()
	if err != nil {
		return nil, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "br0"
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("ip link add br0 type bridge: %w", err)
	}
	*e.closers = append(*e.closers, func() { h.LinkDel(br) })
	addr, _ := netlink.ParseAddr(UnderlayGateway.String() + "/24")
	if err := errors.Join(h.AddrAdd(br, addr), h.LinkSetUp(br)); err != nil {
		return nil, err
	}
	var hosts []UnderlayHost
	for i := range n {
		ns, err := e.Container()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("uplink%d", i+1)
		ends, err := veth.Pair(ctx, e.Host, veth.Config{Name: name, Peer: veth.End{NS: ns, Name: "eth0"}, Up: true})
		if err != nil {
			return nil, err
		}
		*e.closers = append(*e.closers, func() { veth.Delete(context.Background(), e.Host, name) })
		if err := h.LinkSetMasterByIndex(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ends.Host.Index}}, br.Index); err != nil {
			return nil, err
		}
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		if err := AddAddr(ends.Peer, a.String()+"/24"); err != nil {
			return nil, err
		}
		nh, err := ns.Netlink()
		if err != nil {
			return nil, err
		}
		if err := nh.RouteAdd(&netlink.Route{LinkIndex: ends.Peer.Index, Gw: UnderlayGateway.AsSlice()}); err != nil {
			return nil, err
		}
		hosts = append(hosts, UnderlayHost{NS: ns, Addr: a})
	}
	return hosts, nil
}
