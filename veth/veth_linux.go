package veth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/linkdel"
	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
)

// afterCreate, when set by a test, is called after the pair was created and
// before it is set up, to inject a failure half way.
var afterCreate func() error

// Pair creates a veth pair, like `ip link add NAME [mtu MTU] [address MAC]
// type veth peer name PEER [address PEERMAC] netns PEERNS`, with the host
// end in ns and the peer created directly in cfg.Peer.NS. It returns both
// ends.
//
// Bad input fails with a *netns.ValidationError before the kernel is
// touched. If both names are given and the pair already exists with the
// same settings, Pair returns it; a name taken otherwise in either namespace
// fails with an error matching os.ErrExist. A failure after the pair was
// created deletes it again.
func Pair(ctx context.Context, ns *netns.NS, cfg Config) (Ends, error) {
	if err := cfg.Validate(); err != nil {
		return Ends{}, err
	}
	if ns == nil {
		return Ends{}, &netns.ValidationError{Pkg: "veth", Field: "ns", Value: "<nil>", Reason: "no namespace given"}
	}
	if err := ctx.Err(); err != nil {
		return Ends{}, err
	}
	peerNS := cfg.Peer.NS
	if peerNS == nil {
		peerNS = ns
	}
	h, err := ns.Netlink()
	if err != nil {
		return Ends{}, err
	}
	ph, err := peerNS.Netlink()
	if err != nil {
		return Ends{}, err
	}

	named := cfg.Name != "" && cfg.Peer.Name != ""
	if cfg.Name == "" {
		cfg.Name = ifname.Random("veth", 7)
	}
	if cfg.Peer.Name == "" {
		cfg.Peer.Name = ifname.Random("veth", 7)
	}
	wantMAC, wantPeerMAC := cfg.MAC, cfg.Peer.MAC
	if cfg.MAC == nil {
		cfg.MAC = RandomMAC()
	}
	if cfg.Peer.MAC == nil {
		cfg.Peer.MAC = RandomMAC()
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	attrs.MTU = cfg.MTU
	attrs.HardwareAddr = cfg.MAC
	attrs.Group = cfg.Group
	if cfg.Up {
		attrs.Flags = net.FlagUp
	}
	link := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         cfg.Peer.Name,
		PeerHardwareAddr: cfg.Peer.MAC,
		PeerMTU:          uint32(cfg.MTU),
	}
	if !peerNS.Equal(ns) {
		link.PeerNamespace = netlink.NsFd(peerNS.Fd())
	}
	if err := h.LinkAdd(link); err != nil {
		if named && errors.Is(err, os.ErrExist) {
			if ends, ok := existing(ns, peerNS, cfg, wantMAC, wantPeerMAC); ok {
				return ends, nil
			}
		}
		return Ends{}, &netns.OpError{Op: "veth.create", NS: ns.String(), Name: cfg.Name + "/" + cfg.Peer.Name, Err: err}
	}

	// From here on a failure deletes the pair (deleting one end deletes
	// both), so nothing is left behind.
	undo := func(err error) (Ends, error) {
		if derr := h.LinkDel(link); derr != nil && !nlerr.NotExist(derr) {
			err = errors.Join(err, derr)
		}
		return Ends{}, err
	}
	if afterCreate != nil {
		if err := afterCreate(); err != nil {
			return undo(err)
		}
	}
	// The kernel ignores IFLA_IFALIAS in a request that creates a link, so
	// the alias is set by a request of its own.
	if cfg.Alias != "" {
		if err := h.LinkSetAlias(link, cfg.Alias); err != nil {
			return undo(&netns.OpError{Op: "veth.alias", NS: ns.String(), Name: cfg.Name, Err: err})
		}
	}
	peer, err := ph.LinkByName(cfg.Peer.Name)
	if err != nil {
		return undo(&netns.OpError{Op: "veth.create", NS: peerNS.String(), Name: cfg.Peer.Name, Err: err})
	}
	if cfg.Up {
		if err := ph.LinkSetUp(peer); err != nil {
			return undo(&netns.OpError{Op: "veth.up", NS: peerNS.String(), Name: cfg.Peer.Name, Err: err})
		}
	}
	return Ends{
		Host: Link{NS: ns, Index: link.Index, Name: cfg.Name, MAC: cfg.MAC},
		Peer: Link{NS: peerNS, Index: peer.Attrs().Index, Name: cfg.Peer.Name, MAC: cfg.Peer.MAC},
	}, nil
}

// existing returns the pair named by cfg if it is there with the settings
// cfg asks for: both ends veths, each the other's peer, with the MTU and the
// MACs asked for (the generated ones are not compared).
func existing(ns, peerNS *netns.NS, cfg Config, mac, peerMAC net.HardwareAddr) (Ends, bool) {
	h, _ := ns.Netlink()
	ph, _ := peerNS.Netlink()
	a, err := h.LinkByName(cfg.Name)
	if err != nil || a.Type() != "veth" {
		return Ends{}, false
	}
	b, err := ph.LinkByName(cfg.Peer.Name)
	if err != nil || b.Type() != "veth" {
		return Ends{}, false
	}
	aa, ba := a.Attrs(), b.Attrs()
	if aa.ParentIndex != ba.Index || ba.ParentIndex != aa.Index {
		return Ends{}, false
	}
	if cfg.MTU != 0 && (aa.MTU != cfg.MTU || ba.MTU != cfg.MTU) {
		return Ends{}, false
	}
	if (mac != nil && !bytes.Equal(aa.HardwareAddr, mac)) || (peerMAC != nil && !bytes.Equal(ba.HardwareAddr, peerMAC)) {
		return Ends{}, false
	}
	if cfg.Group != 0 && aa.Group != cfg.Group {
		return Ends{}, false
	}
	if cfg.Up && (aa.Flags&net.FlagUp == 0 || ba.Flags&net.FlagUp == 0) {
		return Ends{}, false
	}
	return Ends{
		Host: Link{NS: ns, Index: aa.Index, Name: aa.Name, MAC: aa.HardwareAddr},
		Peer: Link{NS: peerNS, Index: ba.Index, Name: ba.Name, MAC: ba.HardwareAddr},
	}, true
}

// Delete deletes the veth named name in ns, and with it its peer, like `ip
// link del NAME`; either end may be named. Deleting a link that is gone
// succeeds; a link of that name that is not a veth is left alone and is an
// error.
//
// Delete returns once the kernel has taken both ends out of their
// namespaces (unlisted, addresses and routes flushed, a bridge port
// removed from its bridge), about 0.5 ms after the request, and not after
// it has freed them, which waits for RCU grace periods (16-19 ms on the
// project's machine) and changes nothing anyone can observe.
func Delete(ctx context.Context, ns *netns.NS, name string) error {
	if r := ifname.Check(name); r != "" {
		return &netns.ValidationError{Pkg: "veth", Field: "name", Value: name, Reason: r}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	link, err := h.LinkByName(name)
	if nlerr.NotExist(err) {
		return nil
	}
	if err != nil {
		return &netns.OpError{Op: "veth.delete", NS: ns.String(), Name: name, Err: err}
	}
	if link.Type() != "veth" {
		return &netns.OpError{Op: "veth.delete", NS: ns.String(), Name: name, Err: fmt.Errorf("is a %s link, not a veth", link.Type())}
	}
	if err := linkdel.Delete(ns, link.Attrs().Index); err != nil && !nlerr.NotExist(err) {
		return &netns.OpError{Op: "veth.delete", NS: ns.String(), Name: name, Err: err}
	}
	return nil
}
