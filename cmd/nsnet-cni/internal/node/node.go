//go:build linux

package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"
	"github.com/nsnet/nsnet/overlay"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/macvlan"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
)

// attached is what a mode's attach made: the endpoint, for the result and
// the record.
type attached struct {
	id       string
	hostIf   string // host-side interface, if any
	hostMAC  string
	mac      string
	addrs    []netip.Prefix
	subnets  []ipam.SubnetConfig
	defRoute bool
	dnsAddr  netip.Addr // the nameserver the container gets, if any
	// egress is a second interface of the container (an overlay's, on
	// the node's gateway bridge), with the default route, if any.
	egress *overlay.Egress
	undo   func() // detach again
}

func (d *daemon) add(ctx context.Context, conf *cniconf.NetConf, req cniconf.Request) (json.RawMessage, error) {
	ar, cerr := cniconf.ParseAttach(conf, req.Args)
	if cerr != nil {
		return nil, cerr
	}
	if req.ContainerID == "" || req.IfName == "" {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "nsnet-cni: ADD needs CNI_CONTAINERID and CNI_IFNAME", "")
	}
	ctr, err := netns.Open(req.Netns)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("nsnet-cni: netns %q: %v", req.Netns, err), "")
	}
	defer ctr.Close()
	if ctr.Equal(d.host) {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("nsnet-cni: netns %q is the node's own namespace", req.Netns), "")
	}
	rec := &record{Network: conf.Name, Mode: conf.Mode, ContainerID: req.ContainerID, IfName: req.IfName,
		Netns: req.Netns, EndpointID: endpointID(conf.Name, req.ContainerID, req.IfName), Conf: req.Stdin}

	var at attached
	switch conf.Mode {
	case cniconf.ModeBridge:
		at, err = d.addBridge(ctx, conf, rec, ctr, ar)
	case cniconf.ModeMacvlan:
		at, err = d.addMacvlan(ctx, conf, rec, ctr, ar)
	case cniconf.ModeOverlay:
		at, err = d.addOverlay(ctx, conf, rec, ctr, ar)
	}
	if err != nil {
		return nil, err
	}
	undo := []func(){at.undo}
	fail := func(err error) (json.RawMessage, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	for _, a := range at.addrs {
		rec.Addrs = append(rec.Addrs, a.String())
	}

	// Published ports: to the container's address of the host address's
	// family; without a host address, on every address of the host, of
	// each family the container has (as CNI's portmap does).
	for i, p := range ar.Ports {
		base := portmap.Mapping{Proto: strings.ToLower(p.Protocol), HostPort: p.HostPort, CtrPort: p.ContainerPort,
			ID: portID(conf.Name, rec.EndpointID)}
		var host netip.Addr
		if p.HostIP != "" {
			host = netip.MustParseAddr(p.HostIP).Unmap()
		}
		var ms []portmap.Mapping
		for _, a := range at.addrs {
			if host.IsValid() && a.Addr().Is6() != host.Is6() {
				continue
			}
			if slices.ContainsFunc(ms, func(m portmap.Mapping) bool { return m.CtrAddr.Is6() == a.Addr().Is6() }) {
				continue
			}
			m := base
			m.CtrAddr = a.Addr()
			if host.IsValid() && !host.IsUnspecified() {
				m.HostAddr = host
			}
			ms = append(ms, m)
		}
		if len(ms) == 0 {
			return fail(cniconf.ConfError("nsnet-cni: portMappings[%d]: the container has no address of the host address's family", i))
		}
		for _, m := range ms {
			got, err := d.ports.Add(ctx, m)
			if err != nil {
				return fail(fmt.Errorf("nsnet-cni: portMappings[%d] (%d:%d): %w", i, p.HostPort, p.ContainerPort, err))
			}
			undo = append(undo, func() { d.ports.Remove(context.WithoutCancel(ctx), got) })
			rec.Ports = append(rec.Ports, recPortOf(got))
		}
	}

	// Names.
	if conf.DNSServer && len(ar.Names) > 0 {
		rec.DNS = true
		rec.Names = ar.Names
		if conf.Mode == cniconf.ModeBridge {
			if err := d.register(conf.Name, rec); err != nil {
				return fail(fmt.Errorf("nsnet-cni: dns: %w", err))
			}
			undo = append(undo, func() { d.unregister(rec) })
		}
	}

	res := buildResult(conf, rec, at, ar)
	if conf.Prev != nil {
		res = merge(conf.Prev, res)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return fail(err)
	}
	rec.Result = b
	if err := d.writeRecord(rec); err != nil {
		return fail(types.NewError(types.ErrIOFailure, "nsnet-cni: writing the attachment's record: "+err.Error(), ""))
	}
	vres, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fail(types.NewError(types.ErrIncompatibleCNIVersion, "nsnet-cni: "+err.Error(), ""))
	}
	return json.Marshal(vres)
}

func portID(network, epID string) string { return network + "/" + epID }

func recPortOf(m portmap.Mapping) recPort {
	p := recPort{Proto: m.Proto, HostPort: m.HostPort, CtrAddr: m.CtrAddr.String(), CtrPort: m.CtrPort, ID: m.ID}
	if p.Proto == "" {
		p.Proto = "tcp"
	}
	if m.HostAddr.IsValid() {
		p.HostAddr = m.HostAddr.String()
	}
	return p
}

func (p recPort) mapping() portmap.Mapping {
	m := portmap.Mapping{Proto: p.Proto, HostPort: p.HostPort, CtrPort: p.CtrPort, ID: p.ID}
	m.CtrAddr, _ = netip.ParseAddr(p.CtrAddr)
	if p.HostAddr != "" {
		m.HostAddr, _ = netip.ParseAddr(p.HostAddr)
	}
	return m
}

// buildResult makes the ADD's result (spec 1.1.0; converted on output).
func buildResult(conf *cniconf.NetConf, rec *record, at attached, ar cniconf.AttachReq) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	ctrIdx := 0
	if at.hostIf != "" {
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: at.hostIf, Mac: at.hostMAC})
		ctrIdx = 1
	}
	res.Interfaces = append(res.Interfaces, &current.Interface{Name: rec.IfName, Mac: at.mac, Sandbox: rec.Netns})
	for _, a := range at.addrs {
		ipc := &current.IPConfig{Interface: current.Int(ctrIdx), Address: net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		for _, s := range at.subnets {
			if s.Subnet.Contains(a.Addr()) && s.Gateway.IsValid() {
				ipc.Gateway = s.Gateway.AsSlice()
				if at.defRoute {
					dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
					if a.Addr().Is6() {
						dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
					}
					res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(0, dst.Addr().BitLen())}, GW: s.Gateway.AsSlice()})
				}
			}
		}
		res.IPs = append(res.IPs, ipc)
	}
	if e := at.egress; e != nil {
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: e.HostVeth})
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: e.IfName, Mac: e.MAC.String(), Sandbox: rec.Netns})
		idx := len(res.Interfaces) - 1
		for _, a := range e.Addrs {
			ipc := &current.IPConfig{Interface: current.Int(idx), Address: net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
			for _, s := range e.Subnets {
				if s.Subnet.Contains(a.Addr()) && s.Gateway.IsValid() {
					ipc.Gateway = s.Gateway.AsSlice()
					dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
					if a.Addr().Is6() {
						dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
					}
					res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(0, dst.Addr().BitLen())}, GW: s.Gateway.AsSlice()})
				}
			}
			res.IPs = append(res.IPs, ipc)
		}
	}
	if at.dnsAddr.IsValid() {
		res.DNS.Nameservers = []string{at.dnsAddr.String()}
		res.DNS.Domain = strings.TrimSuffix(domain(conf), ".")
		res.DNS.Search = []string{res.DNS.Domain}
	}
	if ar.DNSOpts != nil {
		res.DNS.Search = append(res.DNS.Search, ar.DNSOpts.Searches...)
		res.DNS.Options = append(res.DNS.Options, ar.DNSOpts.Options...)
		if len(res.DNS.Nameservers) == 0 {
			res.DNS.Nameservers = ar.DNSOpts.Servers
		}
	}
	return res
}

func domain(conf *cniconf.NetConf) string {
	if conf.Domain != "" {
		return conf.Domain
	}
	return "nsnet.internal"
}

// merge appends res to the result of the plugins before this one.
func merge(prev, res *current.Result) *current.Result {
	out := *prev
	out.CNIVersion = current.ImplementedSpecVersion
	off := len(prev.Interfaces)
	out.Interfaces = append(slices.Clone(prev.Interfaces), res.Interfaces...)
	out.IPs = slices.Clone(prev.IPs)
	for _, ip := range res.IPs {
		c := ip.Copy()
		if c.Interface != nil {
			c.Interface = current.Int(*c.Interface + off)
		}
		out.IPs = append(out.IPs, c)
	}
	out.Routes = append(slices.Clone(prev.Routes), res.Routes...)
	if !res.DNS.IsEmpty() {
		out.DNS = res.DNS
	}
	return &out
}

// --- bridge ---

func (d *daemon) bridgeNet(ctx context.Context, conf *cniconf.NetConf) (*bridge.Network, error) {
	d.mu.Lock()
	nw := d.bridges[conf.Name]
	d.mu.Unlock()
	if nw != nil && d.linkExists(nw.Config().Bridge) {
		return nw, nil
	}
	alloc, _, err := d.allocator(ctx, conf)
	if err != nil {
		return nil, err
	}
	cfg := bridge.Config{Name: conf.Name, Bridge: conf.Bridge, Subnets: conf.IPAMSubnets, MTU: conf.MTU,
		Internal: conf.Internal, DisableICC: conf.ICC != nil && !*conf.ICC}
	nw, err = bridge.New(ctx, d.host, alloc, cfg)
	if err != nil {
		return nil, fmt.Errorf("nsnet-cni: network %q: %w", conf.Name, err)
	}
	c := nw.Config()
	if !conf.Internal {
		var subs []netip.Prefix
		for _, s := range c.Subnets {
			subs = append(subs, s.Subnet)
		}
		if err := nat.Masquerade(ctx, d.host, nat.Network{Bridge: c.Bridge, Subnets: subs}); err != nil {
			return nil, fmt.Errorf("nsnet-cni: network %q: masquerade: %w", conf.Name, err)
		}
	}
	d.mu.Lock()
	d.bridges[conf.Name] = nw
	d.mu.Unlock()
	return nw, nil
}

func (d *daemon) linkExists(name string) bool {
	h, err := d.host.Netlink()
	if err != nil {
		return false
	}
	_, err = h.LinkByName(name)
	return err == nil
}

func (d *daemon) addBridge(ctx context.Context, conf *cniconf.NetConf, rec *record, ctr *netns.NS, ar cniconf.AttachReq) (attached, error) {
	nw, err := d.bridgeNet(ctx, conf)
	if err != nil {
		return attached{}, err
	}
	ep, err := nw.Attach(ctx, bridge.EndpointConfig{ID: rec.EndpointID, NS: ctr, IfName: rec.IfName,
		Addrs: ar.IPs, MAC: ar.MAC, DefaultRoute: true})
	if err != nil {
		return attached{}, fmt.Errorf("nsnet-cni: attach %s %s to %q: %w", rec.ContainerID, rec.IfName, conf.Name, err)
	}
	at := attached{id: ep.ID, hostIf: ep.HostVeth, mac: ep.MAC.String(), addrs: ep.Addrs,
		subnets: nw.Config().Subnets, defRoute: true,
		undo: func() { nw.Detach(context.WithoutCancel(ctx), ep.ID) }}
	if h, err := d.host.Netlink(); err == nil {
		if l, err := h.LinkByName(ep.HostVeth); err == nil {
			at.hostMAC = l.Attrs().HardwareAddr.String()
		}
	}
	if conf.DNSServer {
		l, err := d.bridgeDNS(ctx, conf, nw)
		if err != nil {
			at.undo()
			return attached{}, fmt.Errorf("nsnet-cni: dns server of %q: %w", conf.Name, err)
		}
		at.dnsAddr = l.Addr().Addr()
	}
	return at, nil
}

// bridgeDNS makes sure the DNS server serves the network, on its (first
// IPv4) gateway address, port 53.
func (d *daemon) bridgeDNS(ctx context.Context, conf *cniconf.NetConf, nw *bridge.Network) (*dnsd.Listener, error) {
	s, err := d.dnsServer(conf)
	if err != nil {
		return nil, err
	}
	c := nw.Config()
	var subs []netip.Prefix
	var gw netip.Addr
	for _, sc := range c.Subnets {
		subs = append(subs, sc.Subnet)
		if !gw.IsValid() || gw.Is6() && sc.Gateway.Is4() {
			gw = sc.Gateway
		}
	}
	if err := s.AddNetwork(conf.Name, subs, c.Internal, c.Bridge); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.dnsNets[conf.Name]; l != nil && l.Addr().Addr() == gw {
		return l, nil
	} else if l != nil {
		l.Close()
	}
	l, err := s.ListenHost(ctx, d.host, netip.AddrPortFrom(gw, 53))
	if err != nil {
		return nil, err
	}
	d.dnsNets[conf.Name] = l
	return l, nil
}

func (d *daemon) register(network string, rec *record) error {
	if d.dns == nil || len(rec.Names) == 0 {
		return nil
	}
	ep := dnsd.Endpoint{Name: rec.Names[0], Aliases: rec.Names[1:]}
	for _, a := range rec.Addrs {
		if p, err := netip.ParsePrefix(a); err == nil {
			ep.Addrs = append(ep.Addrs, p.Addr())
		}
	}
	return d.dns.Register(network, ep)
}

func (d *daemon) unregister(rec *record) {
	if d.dns != nil && rec.DNS && len(rec.Names) > 0 && rec.Mode == cniconf.ModeBridge {
		d.dns.Unregister(rec.Network, rec.Names[0])
	}
}

// delBridge detaches an endpoint, or releases its addresses if the
// network's bridge is gone. It never creates the network.
func (d *daemon) delBridge(ctx context.Context, conf *cniconf.NetConf, id string) error {
	alloc, _, err := d.allocator(ctx, conf)
	if err != nil {
		return err
	}
	d.mu.Lock()
	nw := d.bridges[conf.Name]
	d.mu.Unlock()
	if nw == nil || !d.linkExists(nw.Config().Bridge) {
		nw, err = bridge.Open(ctx, d.host, alloc, conf.Name)
		if errors.Is(err, bridge.ErrNotFound) {
			// The bridge is gone, and the veths with it: the addresses
			// are what is left (bridge's pool "bridge."+Name, owner
			// Name/ID).
			return alloc.Release(ctx, "bridge."+conf.Name, conf.Name+"/"+id)
		}
		if err != nil {
			return err
		}
	}
	return nw.Detach(ctx, id)
}

// --- macvlan ---

func (d *daemon) macvlanNet(ctx context.Context, conf *cniconf.NetConf, create bool) (*macvlan.Network, error) {
	d.mu.Lock()
	nw := d.macvlans[conf.Name]
	d.mu.Unlock()
	if nw != nil && d.linkExists(macvlan.AnchorName(conf.Name)) {
		return nw, nil
	}
	alloc, _, err := d.allocator(ctx, conf)
	if err != nil {
		return nil, err
	}
	if create {
		nw, err = macvlan.New(ctx, d.host, alloc, macvlan.Config{Name: conf.Name, Parent: conf.Parent,
			Mode: macvlan.Mode(conf.MacvlanMode), Subnets: conf.IPAMSubnets, MTU: conf.MTU})
	} else {
		nw, err = macvlan.Open(ctx, d.host, alloc, conf.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("nsnet-cni: network %q: %w", conf.Name, err)
	}
	d.mu.Lock()
	d.macvlans[conf.Name] = nw
	d.mu.Unlock()
	return nw, nil
}

func (d *daemon) addMacvlan(ctx context.Context, conf *cniconf.NetConf, rec *record, ctr *netns.NS, ar cniconf.AttachReq) (attached, error) {
	nw, err := d.macvlanNet(ctx, conf, true)
	if err != nil {
		return attached{}, err
	}
	ep, err := nw.Attach(ctx, macvlan.EndpointConfig{ID: rec.EndpointID, NS: ctr, IfName: rec.IfName,
		Addrs: ar.IPs, MAC: ar.MAC, DefaultRoute: true})
	if err != nil {
		return attached{}, fmt.Errorf("nsnet-cni: attach %s %s to %q: %w", rec.ContainerID, rec.IfName, conf.Name, err)
	}
	return attached{id: ep.ID, mac: ep.MAC.String(), addrs: ep.Addrs, subnets: nw.Config().Subnets, defRoute: true,
		undo: func() { nw.Detach(context.WithoutCancel(ctx), ep.ID, ctr) }}, nil
}

// --- DEL ---

func (d *daemon) del(ctx context.Context, conf *cniconf.NetConf, containerID, ifName, netnsPath string) error {
	if containerID == "" || ifName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "nsnet-cni: DEL needs CNI_CONTAINERID and CNI_IFNAME", "")
	}
	rec, err := d.readRecord(conf.Name, containerID, ifName)
	if err != nil {
		d.log.Warn("unreadable record, deleting by derived names", "container", containerID, "err", err)
	}
	id := endpointID(conf.Name, containerID, ifName)
	if rec != nil && rec.EndpointID != "" {
		id = rec.EndpointID
	}
	if rec != nil && netnsPath == "" {
		netnsPath = rec.Netns
	}
	// Rules before links: the published ports first (also those of a
	// record that was lost), then the names, then the interface.
	var ports []portmap.Mapping
	if rec != nil {
		for _, p := range rec.Ports {
			ports = append(ports, p.mapping())
		}
	}
	if conf.Mode == cniconf.ModeBridge {
		all, err := portmap.List(ctx, d.host)
		if err != nil {
			return err
		}
		for _, m := range all {
			if m.ID == portID(conf.Name, id) {
				ports = append(ports, m)
			}
		}
	}
	for _, m := range ports {
		if err := d.ports.Remove(ctx, m); err != nil {
			return fmt.Errorf("nsnet-cni: unpublish %s: %w", m, err)
		}
	}
	if rec != nil {
		d.unregister(rec)
	}
	switch conf.Mode {
	case cniconf.ModeBridge:
		if err := d.delBridge(ctx, conf, id); err != nil {
			return err
		}
	case cniconf.ModeMacvlan:
		var ctr *netns.NS
		if netnsPath != "" {
			if ns, err := netns.Open(netnsPath); err == nil {
				defer ns.Close()
				ctr = ns
			}
		}
		nw, err := d.macvlanNet(ctx, conf, false)
		if errors.Is(err, macvlan.ErrNotFound) {
			break // the network is gone, and its endpoints with it
		}
		if err == nil {
			err = nw.Detach(ctx, id, ctr)
		}
		if err != nil {
			return err
		}
	case cniconf.ModeOverlay:
		if err := d.delOverlay(ctx, conf, rec, id); err != nil {
			return err
		}
	}
	return d.removeRecord(conf.Name, containerID, ifName)
}

// --- CHECK ---

func (d *daemon) check(ctx context.Context, conf *cniconf.NetConf, req cniconf.Request) error {
	rec, err := d.readRecord(conf.Name, req.ContainerID, req.IfName)
	if err != nil {
		return err
	}
	if rec == nil {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("nsnet-cni: CHECK: container %s %s is not attached to %q", req.ContainerID, req.IfName, conf.Name), "")
	}
	res := conf.Prev
	if res == nil {
		r, err := current.NewResult(rec.Result)
		if err != nil {
			return err
		}
		res, _ = r.(*current.Result)
	}
	drift := func(format string, args ...any) error {
		return types.NewError(types.ErrInternal, fmt.Sprintf("nsnet-cni: CHECK %s %s on %q: ", req.ContainerID, req.IfName, conf.Name)+fmt.Sprintf(format, args...), "")
	}
	ctr, err := netns.Open(req.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("nsnet-cni: CHECK: netns %q: %v", req.Netns, err), "")
	}
	defer ctr.Close()
	ch, err := ctr.Netlink()
	if err != nil {
		return err
	}
	idx := -1
	for i, itf := range res.Interfaces {
		if itf.Sandbox != "" && itf.Name == req.IfName {
			idx = i
		}
	}
	if idx < 0 {
		return drift("the result names no interface %s in the container", req.IfName)
	}
	l, err := ch.LinkByName(req.IfName)
	if err != nil {
		return drift("interface %s is gone from the container", req.IfName)
	}
	if want := res.Interfaces[idx].Mac; want != "" && !strings.EqualFold(l.Attrs().HardwareAddr.String(), want) {
		return drift("interface %s has MAC %s, not %s", req.IfName, l.Attrs().HardwareAddr, want)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return drift("interface %s is down", req.IfName)
	}
	addrs, err := ch.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface != idx {
			continue
		}
		found := false
		for _, a := range addrs {
			if a.IP.Equal(ip.Address.IP) && a.Mask.String() == ip.Address.Mask.String() {
				found = true
			}
		}
		if !found {
			return drift("address %s is gone from %s", ip.Address.String(), req.IfName)
		}
	}
	routes, err := ch.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, r := range res.Routes {
		ones, _ := r.Dst.Mask.Size()
		found := false
		for _, kr := range routes {
			kones := 0
			if kr.Dst != nil {
				kones, _ = kr.Dst.Mask.Size()
			}
			dstOK := kones == ones && (kr.Dst == nil && r.Dst.IP.IsUnspecified() || kr.Dst != nil && kr.Dst.IP.Equal(r.Dst.IP))
			if dstOK && (r.GW == nil || kr.Gw.Equal(r.GW)) {
				found = true
			}
		}
		if !found {
			return drift("route to %s via %s is gone", r.Dst.String(), r.GW)
		}
	}
	if conf.Mode == cniconf.ModeBridge && len(res.Interfaces) > 0 && idx > 0 {
		hostIf := res.Interfaces[idx-1].Name
		h, err := d.host.Netlink()
		if err != nil {
			return err
		}
		hl, err := h.LinkByName(hostIf)
		if err != nil {
			return drift("host interface %s is gone", hostIf)
		}
		if hl.Attrs().MasterIndex == 0 {
			return drift("host interface %s is no longer a port of the bridge", hostIf)
		}
	}
	if len(rec.Ports) > 0 {
		all, err := portmap.List(ctx, d.host)
		if err != nil {
			return err
		}
		for _, p := range rec.Ports {
			m := p.mapping()
			if !slices.ContainsFunc(all, func(x portmap.Mapping) bool {
				return x.Proto == m.Proto && x.HostPort == m.HostPort && x.HostAddr == m.HostAddr && x.CtrAddr == m.CtrAddr && x.CtrPort == m.CtrPort
			}) {
				return drift("published port %s is gone", m)
			}
		}
	}
	return nil
}

// --- GC ---

// gc removes every attachment of the network on this node that is not in
// cni.dev/valid-attachments: those with records, and endpoints, addresses
// and ports the libraries hold without one (a daemon killed half way). A
// network left with no attachment on the node is removed from it (its
// bridge, rules and pool; an overlay host's devices), to be made again by
// the next ADD.
func (d *daemon) gc(ctx context.Context, conf *cniconf.NetConf) error {
	valid := map[[2]string]bool{}
	live := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[[2]string{a.ContainerID, a.IfName}] = true
		live[endpointID(conf.Name, a.ContainerID, a.IfName)] = true
	}
	recs, err := d.records(conf.Name)
	if err != nil {
		return err
	}
	var errs []error
	left := 0
	for _, r := range recs {
		if valid[[2]string{r.ContainerID, r.IfName}] {
			live[r.EndpointID] = true
			left++
			continue
		}
		if err := d.del(ctx, conf, r.ContainerID, r.IfName, r.Netns); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", r.ContainerID, r.IfName, err))
			left++
		}
	}
	switch conf.Mode {
	case cniconf.ModeBridge:
		errs = append(errs, d.gcBridge(ctx, conf, live, left == 0))
	case cniconf.ModeMacvlan:
		errs = append(errs, d.gcMacvlan(ctx, conf, live, left == 0))
	case cniconf.ModeOverlay:
		errs = append(errs, d.gcOverlay(ctx, conf, left == 0))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("nsnet-cni: GC of %q: %w", conf.Name, err)
	}
	return nil
}

func (d *daemon) gcBridge(ctx context.Context, conf *cniconf.NetConf, live map[string]bool, empty bool) error {
	alloc, _, err := d.allocator(ctx, conf)
	if err != nil {
		return err
	}
	all, err := portmap.List(ctx, d.host)
	if err != nil {
		return err
	}
	prefix := conf.Name + "/"
	for _, m := range all {
		if strings.HasPrefix(m.ID, prefix) && !live[strings.TrimPrefix(m.ID, prefix)] {
			if err := d.ports.Remove(ctx, m); err != nil {
				return err
			}
		}
	}
	nw, err := bridge.Open(ctx, d.host, alloc, conf.Name)
	if errors.Is(err, bridge.ErrNotFound) {
		_, err = alloc.GC(ctx, "bridge."+conf.Name, func(string) bool { return false })
		return err
	}
	if err != nil {
		return err
	}
	info, err := nw.Inspect(ctx)
	if err != nil {
		return err
	}
	for _, ep := range info.Endpoints {
		if !live[ep.ID] {
			if err := nw.Detach(ctx, ep.ID); err != nil {
				return err
			}
		} else {
			empty = false // a valid attachment the records lost: keep the network
		}
	}
	// Addresses whose veths are gone (the daemon died between the two).
	if _, err := alloc.GC(ctx, "bridge."+conf.Name, func(owner string) bool {
		return live[strings.TrimPrefix(owner, conf.Name+"/")]
	}); err != nil {
		return err
	}
	if !empty {
		return nil
	}
	d.mu.Lock()
	if l := d.dnsNets[conf.Name]; l != nil {
		l.Close()
		delete(d.dnsNets, conf.Name)
	}
	if d.dns != nil {
		d.dns.RemoveNetwork(conf.Name)
	}
	delete(d.bridges, conf.Name)
	d.mu.Unlock()
	if err := nat.Remove(ctx, d.host, nw.Config().Bridge); err != nil {
		return err
	}
	return nw.Delete(ctx, true)
}

func (d *daemon) gcMacvlan(ctx context.Context, conf *cniconf.NetConf, live map[string]bool, empty bool) error {
	nw, err := d.macvlanNet(ctx, conf, false)
	if errors.Is(err, macvlan.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := nw.Inspect(ctx)
	if err != nil {
		return err
	}
	for _, ep := range info.Endpoints {
		if !live[ep.ID] {
			if err := nw.Detach(ctx, ep.ID, nil); err != nil {
				return err
			}
		} else {
			empty = false
		}
	}
	if !empty {
		return nil
	}
	d.mu.Lock()
	delete(d.macvlans, conf.Name)
	d.mu.Unlock()
	return nw.Delete(ctx, true)
}

// --- recovery ---

// recover takes back, after a restart, what the records say the daemon
// held: port reservations, names, overlays' control plane and listeners.
func (d *daemon) recover() {
	recs, err := d.records("")
	if err != nil {
		d.log.Warn("reading records", "err", err)
		return
	}
	ctx := context.Background()
	for _, r := range recs {
		for _, p := range r.Ports {
			if err := d.ports.Reserve(p.mapping()); err != nil {
				d.log.Warn("reserving a published port", "port", p.mapping().String(), "err", err)
			}
		}
		conf, cerr := cniconf.Parse(r.Conf)
		if cerr != nil {
			continue
		}
		switch r.Mode {
		case cniconf.ModeBridge:
			if r.DNS {
				nw, err := d.bridgeNet(ctx, conf)
				if err == nil {
					_, err = d.bridgeDNS(ctx, conf, nw)
				}
				if err == nil {
					err = d.register(conf.Name, r)
				}
				if err != nil {
					d.log.Warn("names of an attachment", "container", r.ContainerID, "err", err)
				}
			}
		case cniconf.ModeOverlay:
			if err := d.recoverOverlay(ctx, conf, r); err != nil {
				d.log.Warn("overlay attachment", "container", r.ContainerID, "err", err)
			}
		}
	}
}
