//go:build linux

package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/overlay"
	"github.com/vishvananda/netlink"
)

// nodeName is the overlay node's name: the configuration's, or the host
// name.
func nodeName(conf *cniconf.NetConf) (string, error) {
	if conf.NodeName != "" {
		return conf.NodeName, nil
	}
	return os.Hostname()
}

func (d *daemon) overlayKey(conf *cniconf.NetConf) string {
	store := "file"
	if conf.Store == "etcd" {
		store = etcdKey(conf.Etcd)
	}
	name, _ := nodeName(conf)
	return store + "|" + name
}

// overlayHost returns this node's part of the overlays on the
// configuration's store, joining at the first need.
func (d *daemon) overlayHost(ctx context.Context, conf *cniconf.NetConf) (*overlay.Host, ipam.Store, error) {
	alloc, st, err := d.allocator(ctx, conf)
	if err != nil {
		return nil, nil, err
	}
	key := d.overlayKey(conf)
	d.mu.Lock()
	h := d.overlays[key]
	d.mu.Unlock()
	if h != nil {
		return h, st, nil
	}
	name, err := nodeName(conf)
	if err != nil {
		return nil, nil, err
	}
	vtep, err := d.vtep(conf)
	if err != nil {
		return nil, nil, err
	}
	gwStore, err := ipam.OpenFileStore(filepath.Join(d.dir, "gateway-ipam"))
	if err != nil {
		return nil, nil, err
	}
	gwAlloc, _ := ipam.New(gwStore, ipam.Config{})
	dns, err := d.dnsServer(conf)
	if err != nil {
		gwStore.Close()
		return nil, nil, err
	}
	h, err = overlay.Join(ctx, overlay.HostConfig{NS: d.host, Name: name, VTEP: vtep, Store: st, Alloc: alloc,
		GatewayAlloc: gwAlloc, Prefix: "overlay/", Logger: d.log, DNS: dns})
	if err != nil {
		gwStore.Close()
		return nil, nil, fmt.Errorf("nsnet-cni: joining the overlays as %q (VTEP %s): %w", name, vtep, err)
	}
	d.mu.Lock()
	d.overlays[key] = h
	d.mu.Unlock()
	return h, st, nil
}

// vtep is the configuration's VTEP, or the address of the interface of
// the host's default route.
func (d *daemon) vtep(conf *cniconf.NetConf) (netip.Addr, error) {
	if conf.VTEP != "" {
		return netip.MustParseAddr(conf.VTEP), nil
	}
	routes, err := d.host.Routes(netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
			continue
		}
		h, err := d.host.Netlink()
		if err != nil {
			return netip.Addr{}, err
		}
		l, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			continue
		}
		a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		return a, nil
	}
	return netip.Addr{}, cniconf.ConfError("nsnet-cni: no vtep given and the node has no default route to take its address from")
}

// overlayID is the endpoint's ID in the overlay, which is also its name in
// every node's DNS server: the container's name when it has one (claimed
// in the store, so that no two containers of the cluster share it),
// else one derived from the attachment.
func (d *daemon) overlayID(ctx context.Context, st ipam.Store, conf *cniconf.NetConf, rec *record, names []string) (string, error) {
	if !conf.DNSServer || len(names) == 0 {
		return rec.EndpointID, nil
	}
	node, _ := nodeName(conf)
	id := names[0]
	key := claimKey(conf.Name, id)
	owner := []byte(node + "/" + rec.ContainerID + "/" + rec.IfName)
	_, err := st.CAS(ctx, ipam.Op{Key: key, Value: owner})
	if errors.Is(err, ipam.ErrConflict) {
		kv, gerr := st.Get(ctx, key)
		if gerr != nil {
			return "", gerr
		}
		if string(kv.Value) != string(owner) {
			return "", types.NewError(cniconf.ErrAddrInUse, fmt.Sprintf("nsnet-cni: name %q is taken on network %q by %s", id, conf.Name, kv.Value), "")
		}
		return id, nil
	}
	return id, err
}

// overlayAliases are the names after the first (the endpoint's ID, see
// overlayID): every host of the overlay serves them too.
func overlayAliases(conf *cniconf.NetConf, names []string) []string {
	if !conf.DNSServer || len(names) < 2 {
		return nil
	}
	return names[1:]
}

func claimKey(network, id string) string { return "cni/claims/" + network + "/" + id }

func (d *daemon) releaseClaim(ctx context.Context, st ipam.Store, conf *cniconf.NetConf, rec *record) error {
	if rec == nil || rec.EndpointID == "" || rec.EndpointID == endpointID(conf.Name, rec.ContainerID, rec.IfName) {
		return nil
	}
	node, _ := nodeName(conf)
	key := claimKey(conf.Name, rec.EndpointID)
	kv, err := st.Get(ctx, key)
	if errors.Is(err, ipam.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(kv.Value) != node+"/"+rec.ContainerID+"/"+rec.IfName {
		return nil
	}
	_, err = st.CAS(ctx, ipam.Op{Key: key, Rev: kv.Rev, Delete: true})
	if errors.Is(err, ipam.ErrConflict) {
		return nil
	}
	return err
}

func (d *daemon) addOverlay(ctx context.Context, conf *cniconf.NetConf, rec *record, ctr *netns.NS, ar cniconf.AttachReq) (attached, error) {
	h, st, err := d.overlayHost(ctx, conf)
	if err != nil {
		return attached{}, err
	}
	n, err := h.Create(ctx, overlay.Config{Name: conf.Name, VNI: conf.VNI, Subnets: conf.IPAMSubnets, MTU: conf.MTU, Internal: conf.Internal})
	if err != nil {
		return attached{}, fmt.Errorf("nsnet-cni: network %q: %w", conf.Name, err)
	}
	id, err := d.overlayID(ctx, st, conf, rec, ar.Names)
	if err != nil {
		return attached{}, err
	}
	rec.EndpointID = id
	ep, err := n.Attach(ctx, overlay.EndpointConfig{ID: id, NS: ctr, IfName: rec.IfName, MAC: ar.MAC, Aliases: overlayAliases(conf, ar.Names)})
	if err != nil {
		d.releaseClaim(context.WithoutCancel(ctx), st, conf, rec)
		return attached{}, fmt.Errorf("nsnet-cni: attach %s %s to %q: %w", rec.ContainerID, rec.IfName, conf.Name, err)
	}
	at := attached{id: id, mac: ep.MAC.String(), addrs: ep.Addrs, subnets: n.Config().Subnets, egress: ep.Egress}
	at.undo = func() {
		n.Detach(context.WithoutCancel(ctx), id)
		d.releaseClaim(context.WithoutCancel(ctx), st, conf, rec)
	}
	if conf.DNSServer {
		l, err := d.containerDNS(ctx, conf, rec, ctr, ep.Addrs)
		if err != nil {
			at.undo()
			return attached{}, fmt.Errorf("nsnet-cni: dns in the container: %w", err)
		}
		at.dnsAddr = l.Addr().Addr()
		undo := at.undo
		at.undo = func() { d.closeContainerDNS(rec); undo() }
	}
	return at, nil
}

func ctrKey(rec *record) string { return rec.Network + "/" + rec.ContainerID + "/" + rec.IfName }

// containerDNS serves DNS on 127.0.0.11 in the container: an overlay has
// no address of the host its containers could ask.
func (d *daemon) containerDNS(ctx context.Context, conf *cniconf.NetConf, rec *record, ctr *netns.NS, addrs []netip.Prefix) (*dnsd.Listener, error) {
	s, err := d.dnsServer(conf)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.ctrDNS[ctrKey(rec)]; l != nil {
		return l, nil
	}
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, a.Addr())
	}
	l, err := s.ListenContainer(ctx, ctr, as)
	if err != nil {
		return nil, err
	}
	d.ctrDNS[ctrKey(rec)] = l
	return l, nil
}

func (d *daemon) closeContainerDNS(rec *record) {
	d.mu.Lock()
	l := d.ctrDNS[ctrKey(rec)]
	delete(d.ctrDNS, ctrKey(rec))
	d.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

func (d *daemon) delOverlay(ctx context.Context, conf *cniconf.NetConf, rec *record, id string) error {
	if rec != nil {
		d.closeContainerDNS(rec)
	}
	h, st, err := d.overlayHost(ctx, conf)
	if err != nil {
		return err
	}
	n, err := h.Network(ctx, conf.Name)
	if errors.Is(err, overlay.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := n.Detach(ctx, id); err != nil {
		return err
	}
	return d.releaseClaim(ctx, st, conf, rec)
}

// gcOverlay: when no overlay attachment is left on the node, its part of
// the overlays goes (devices, gateway bridge, host record); the networks
// stay defined for the other nodes.
func (d *daemon) gcOverlay(ctx context.Context, conf *cniconf.NetConf, empty bool) error {
	if !empty {
		return nil
	}
	recs, err := d.records("")
	if err != nil {
		return err
	}
	key := d.overlayKey(conf)
	for _, r := range recs {
		if r.Mode != cniconf.ModeOverlay {
			continue
		}
		if c, cerr := cniconf.Parse(r.Conf); cerr == nil && d.overlayKey(c) == key {
			return nil
		}
	}
	d.mu.Lock()
	h := d.overlays[key]
	delete(d.overlays, key)
	d.mu.Unlock()
	if h == nil {
		return nil
	}
	return h.Close(ctx)
}

func (d *daemon) recoverOverlay(ctx context.Context, conf *cniconf.NetConf, r *record) error {
	h, _, err := d.overlayHost(ctx, conf)
	if err != nil {
		return err
	}
	if _, err := h.Network(ctx, conf.Name); err != nil {
		return err
	}
	if !r.DNS && !conf.DNSServer {
		return nil
	}
	ctr, err := netns.Open(r.Netns)
	if err != nil {
		return err
	}
	defer ctr.Close()
	var addrs []netip.Prefix
	for _, a := range r.Addrs {
		if p, err := netip.ParsePrefix(a); err == nil {
			addrs = append(addrs, p)
		}
	}
	_, err = d.containerDNS(ctx, conf, r, ctr, addrs)
	return err
}
