package main

import (
	"context"
	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestPortMappings: a port published through the portMappings capability
// is reached from outside through the host's address (the service sees
// the client's own address), also on a host address given as hostIP;
// after DEL it is not, and the port can be published again.
func TestPortMappings(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	n := newNode(t, host)
	list := n.netList("tports", map[string]any{"subnets": []map[string]string{{"subnet": "10.97.0.0/24"}}})
	c := n.container("web", map[string]any{"portMappings": []map[string]any{
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": out.HostAddr.Addr().String()},
	}})
	n.add(list, c)
	ctx := t.Context()
	nstest.Serve(t, c.ns, "tcp", "0.0.0.0:80")
	nstest.Serve(t, c.ns, "udp", "0.0.0.0:53")
	at := netip.AddrPortFrom(out.HostAddr.Addr(), 8080).String()
	r, err := nstest.Exchange(ctx, out.NS, "tcp", at, "hello")
	if err != nil || r.Peer.Addr() != out.Addr {
		t.Errorf("outside -> %s: %+v %v (want the client's own address %s)", at, r, err, out.Addr)
	}
	udpAt := netip.AddrPortFrom(out.HostAddr.Addr(), 5353).String()
	if _, err := nstest.Exchange(ctx, out.NS, "udp", udpAt, "hello"); err != nil {
		t.Errorf("outside -> udp %s: %v", udpAt, err)
	}
	if err := n.cni.CheckNetworkList(ctx, list, c.rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	n.del(list, c)
	if _, err := nstest.Exchange(ctx, out.NS, "tcp", at, "hello"); err == nil {
		t.Error("the port is still published after DEL")
	}
	c2 := n.container("web2", map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80}}})
	n.add(list, c2)
	// A port that is taken is a CNI error naming it, and nothing stays.
	c3 := n.container("web3", map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80}}})
	_, err = n.cni.AddNetworkList(ctx, list, c3.rt)
	if te := cniErr(t, err); te.Code != cniconf.ErrAddrInUse || !strings.Contains(te.Msg, "8080") {
		t.Errorf("publishing a taken port: %d %q", te.Code, te.Msg)
	}
	if names := nstest.LinkNames(t, c3.ns); len(names) != 1 {
		t.Errorf("failed ADD left links %v", names)
	}
}

// TestStaticIPAndMAC: the ips and mac capabilities (and CNI_ARGS IP=)
// give the container its address and MAC; a taken address is refused.
func TestStaticIPAndMAC(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tstatic", map[string]any{"subnets": []map[string]string{{"subnet": "10.98.0.0/24"}}})
	c := n.container("s1", map[string]any{"ips": []string{"10.98.0.100/24"}, "mac": "02:42:ac:11:00:99"})
	r := n.add(list, c)
	if a := addrOf(t, r); a != netip.MustParseAddr("10.98.0.100") {
		t.Errorf("address %s, want 10.98.0.100", a)
	}
	h, _ := c.ns.Netlink()
	l, err := h.LinkByName("eth0")
	if err != nil || l.Attrs().HardwareAddr.String() != "02:42:ac:11:00:99" {
		t.Errorf("eth0 MAC %v %v", l, err)
	}
	c2 := n.container("s2", nil, [2]string{"IP", "10.98.0.101"})
	if a := addrOf(t, n.add(list, c2)); a != netip.MustParseAddr("10.98.0.101") {
		t.Errorf("CNI_ARGS IP: address %s", a)
	}
	c3 := n.container("s3", map[string]any{"ips": []string{"10.98.0.100"}})
	_, err = n.cni.AddNetworkList(t.Context(), list, c3.rt)
	if te := cniErr(t, err); te.Code != cniconf.ErrAddrInUse || !strings.Contains(te.Msg, "address in use") {
		t.Errorf("taken address: %d %q", te.Code, te.Msg)
	}
}

// lookup resolves name from ns through the nameserver at server:53.
func lookup(ctx context.Context, ns *netns.NS, server netip.Addr, name string) ([]netip.Addr, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return ns.Dial(ctx, nil, network, netip.AddrPortFrom(server, 53).String())
	}}
	return r.LookupNetIP(ctx, "ip4", name)
}

// TestDNS: names (K8S_POD_NAME and aliases) resolve between the
// containers of a network through the node's DNS server on the gateway,
// which the result names; not from another network; and not after DEL.
func TestDNS(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tdns", map[string]any{"subnets": []map[string]string{{"subnet": "10.99.0.0/24"}},
		"dnsServer": true, "dnsUpstreams": []string{}})
	other := n.netList("tdns2", map[string]any{"subnets": []map[string]string{{"subnet": "10.99.1.0/24"}},
		"dnsServer": true, "dnsUpstreams": []string{}})
	web := n.container("web-id", map[string]any{"aliases": []string{"www", "frontend"}}, [2]string{"K8S_POD_NAME", "web"})
	db := n.container("db-id", map[string]any{"aliases": []string{"db"}})
	stranger := n.container("x-id", map[string]any{"aliases": []string{"stranger"}})
	rw := n.add(list, web)
	rd := n.add(list, db)
	rs := n.add(other, stranger)
	gw := netip.MustParseAddr("10.99.0.1")
	if len(rw.DNS.Nameservers) != 1 || rw.DNS.Nameservers[0] != gw.String() {
		t.Errorf("result DNS %+v, want nameserver %s", rw.DNS, gw)
	}
	ctx := t.Context()
	for _, q := range []struct {
		from *ctr
		name string
		want netip.Addr
	}{
		{web, "db", addrOf(t, rd)},
		{db, "web", addrOf(t, rw)},
		{db, "www", addrOf(t, rw)},
		{db, "frontend.nsnet.internal", addrOf(t, rw)},
	} {
		got, err := lookup(ctx, q.from.ns, gw, q.name)
		if err != nil || len(got) != 1 || got[0] != q.want {
			t.Errorf("%s resolves %s: %v %v, want %s", q.from.rt.ContainerID, q.name, got, err, q.want)
		}
	}
	if got, err := lookup(ctx, stranger.ns, netip.MustParseAddr("10.99.1.1"), "db"); err == nil {
		t.Errorf("a container of another network resolves db: %v", got)
	}
	if got, err := lookup(ctx, stranger.ns, netip.MustParseAddr("10.99.1.1"), "stranger"); err != nil || got[0] != addrOf(t, rs) {
		t.Errorf("stranger resolves itself: %v %v", got, err)
	}
	n.del(list, db)
	if got, err := lookup(ctx, web.ns, gw, "db"); err == nil {
		t.Errorf("db still resolves after DEL: %v", got)
	}
	// The daemon restarts: the names come back from the records.
	n.stopDaemon()
	n.add(list, db) // starts it again
	if got, err := lookup(ctx, db.ns, gw, "web"); err != nil || got[0] != addrOf(t, rw) {
		t.Errorf("after a daemon restart, db resolves web: %v %v", got, err)
	}
}
