package netns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsnet/nsnet/internal/nlerr"
	"github.com/vishvananda/netlink"
)

// LoopbackUp sets lo up in ns, like `ip link set lo up`; a fresh
// namespace's lo is DOWN and even 127.0.0.1 does not answer until then.
// Setting it up when it is up is a no-op.
func (ns *NS) LoopbackUp() error {
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return ns.opErr("netns.lo-up", "lo", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return ns.opErr("netns.lo-up", "lo", err)
	}
	return nil
}

// Links lists the links of ns, like `ip link show`, retrying the dump if the
// kernel interrupted it, so the list is never partial.
func (ns *NS) Links() ([]netlink.Link, error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	links, err := nlerr.Retry(h.LinkList)
	if err != nil {
		return nil, ns.opErr("netns.links", "", err)
	}
	return links, nil
}

// Addrs lists the addresses of ns of the given family (netlink.FAMILY_ALL,
// FAMILY_V4 or FAMILY_V6) on link, or on every link when link is nil, like
// `ip addr show`; interrupted dumps are retried.
func (ns *NS) Addrs(link netlink.Link, family int) ([]netlink.Addr, error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	addrs, err := nlerr.Retry(func() ([]netlink.Addr, error) { return h.AddrList(link, family) })
	if err != nil {
		return nil, ns.opErr("netns.addrs", "", err)
	}
	return addrs, nil
}

// Routes lists the routes of the main table of ns of the given family, like
// `ip route show`; interrupted dumps are retried.
func (ns *NS) Routes(family int) ([]netlink.Route, error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	routes, err := nlerr.Retry(func() ([]netlink.Route, error) { return h.RouteList(nil, family) })
	if err != nil {
		return nil, ns.opErr("netns.routes", "", err)
	}
	return routes, nil
}

// RoutePrefixes returns the destinations of the routes of ns (IPv4 and
// IPv6, main table, default routes left out). ipam uses it, through its
// RouteSource interface, to pick subnets that no route of the host covers.
func (ns *NS) RoutePrefixes(ctx context.Context) ([]netip.Prefix, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	routes, err := ns.Routes(netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue // a default route covers everything: it rules nothing out
		}
		addr, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 {
			continue
		}
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones).Masked())
	}
	return out, nil
}

// sysctlPath turns "net.ipv4.ip_forward" or "net/ipv4/ip_forward" into its
// /proc/sys path, refusing keys outside net/: only those are per namespace,
// and writing any other would change the whole machine.
func sysctlPath(key string) (string, error) {
	p := key
	if !strings.Contains(p, "/") {
		p = strings.ReplaceAll(p, ".", "/")
	}
	bad := func(reason string) (string, error) {
		return "", &ValidationError{Pkg: "netns", Field: "sysctl", Value: key, Reason: reason}
	}
	parts := strings.Split(p, "/")
	if parts[0] != "net" || len(parts) < 2 {
		return bad("not a net.* key: only those belong to a network namespace")
	}
	for _, s := range parts {
		if s == "" || s == "." || s == ".." {
			return bad("has an empty, . or .. element")
		}
	}
	return filepath.Join("/proc/sys", p), nil
}

// Sysctl reads a sysctl of ns, like `ip netns exec NS sysctl KEY`: key is
// "net.ipv4.ip_forward" or "net/ipv4/ip_forward" (the slash form is for
// interface names containing a dot). Only net.* keys are accepted.
func (ns *NS) Sysctl(key string) (string, error) {
	path, err := sysctlPath(key)
	if err != nil {
		return "", err
	}
	var val string
	err = ns.Do(func() error {
		// /proc/sys/net shows the namespace of the thread that opens it.
		b, err := os.ReadFile(path)
		val = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", ns.opErr("netns.sysctl", key, err)
	}
	return val, nil
}

// SetSysctl writes a sysctl of ns and of no other namespace, like `ip netns
// exec NS sysctl -w KEY=VALUE`. Only net.* keys are accepted.
func (ns *NS) SetSysctl(key, value string) error {
	path, err := sysctlPath(key)
	if err != nil {
		return err
	}
	err = ns.Do(func() error {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString(value)
		cerr := f.Close()
		if werr != nil {
			return werr
		}
		return cerr
	})
	if err != nil {
		return ns.opErr("netns.sysctl", key, err)
	}
	return nil
}

// Listen opens a stream listener in ns, like net.Listen run inside the
// namespace. The listener stays in ns and can be used from any goroutine.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet listener in ns, like net.ListenPacket run
// inside the namespace.
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Dial connects from ns, like (*net.Dialer).DialContext run inside the
// namespace; d may be nil for the zero Dialer. The connection stays in ns.
func (ns *NS) Dial(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	if ctx == nil {
		return nil, &ValidationError{Pkg: "netns", Field: "ctx", Value: "<nil>", Reason: "no context"}
	}
	if d == nil {
		d = &net.Dialer{}
	}
	var c net.Conn
	err := ns.Do(func() (err error) {
		// The socket is created in ns by the dial; the dial itself may
		// wait for ctx, which is fine on this locked thread.
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
