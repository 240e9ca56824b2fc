package main

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"

	"github.com/containernetworking/cni/libcni"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
)

// TestMacvlan: S10 through the plugin and examples/macvlan.conflist: two nodes on one segment, a
// macvlan network on each node's eth0 with static addresses (ips); the
// containers reach each other across the nodes.
func TestMacvlan(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 2)
	ctx := t.Context()
	var ctrs []*ctr
	var nodes []*node
	var lists []*libcni.NetworkConfigList
	for i, h := range topo.Hosts {
		n := newNode(t, h.NS)
		list := n.exampleList("macvlan.conflist", map[string]any{"stateDir": n.dir})
		c := n.container(fmt.Sprintf("mv%d", i), map[string]any{"ips": []string{fmt.Sprintf("172.29.0.%d", 81+i)}})
		r := n.add(list, c)
		if a := addrOf(t, r); a != netip.MustParseAddr(fmt.Sprintf("172.29.0.%d", 81+i)) {
			t.Errorf("node %d: address %s", i, a)
		}
		if len(r.Interfaces) != 1 || r.Interfaces[0].Sandbox == "" {
			t.Errorf("interfaces %v", r.Interfaces)
		}
		ctrs, nodes, lists = append(ctrs, c), append(nodes, n), append(lists, list)
	}
	if err := nstest.Ping(ctx, ctrs[0].ns, netip.MustParseAddr("172.29.0.82")); err != nil {
		t.Errorf("node 1's container -> node 2's: %v", err)
	}
	if err := checkAttachment(nodes[0], lists[0], ctrs[0]); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for i, n := range nodes {
		n.del(lists[i], ctrs[i])
		n.del(lists[i], ctrs[i])
	}
	if err := nstest.Ping(ctx, ctrs[0].ns, netip.MustParseAddr("172.29.0.82")); err == nil {
		t.Error("still reachable after DEL")
	}
}

func checkAttachment(n *node, list *libcni.NetworkConfigList, c *ctr) error {
	return n.cni.CheckNetworkList(n.t.Context(), list, c.rt)
}

// underlayEtcd starts a real etcd server (the public fixture) on the
// underlay segment, at 198.18.0.254, and returns its client URL: the nodes
// reach it over the underlay, as machines reach their cluster's etcd.
func underlayEtcd(t *testing.T, topo *nstest.Topology) string {
	t.Helper()
	srv := etcdtest.Start(t)
	srv.Attach(t, topo)
	return srv.UnderlayEndpoints()[0]
}

// TestMacvlanSharedIPAM: macvlan networks of two nodes on one segment,
// their addresses from one pool in etcd ("store": "etcd"): no static
// addresses needed (the weakness of S10), yet no address is handed out
// twice, and the containers reach each other.
func TestMacvlanSharedIPAM(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 2)
	endpoint := underlayEtcd(t, topo)
	var got []netip.Addr
	var ctrs []*ctr
	for i, h := range topo.Hosts {
		n := newNode(t, h.NS)
		list := n.exampleList("macvlan.conflist", map[string]any{"stateDir": n.dir, "store": "etcd",
			"etcd": map[string]any{"endpoints": []string{endpoint}, "prefix": "/shared/"}})
		for j := range 3 {
			c := n.container(fmt.Sprintf("n%dc%d", i, j), nil)
			got = append(got, addrOf(t, n.add(list, c)))
			ctrs = append(ctrs, c)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, a := range got {
		if seen[a] {
			t.Errorf("%s handed out twice: %v", a, got)
		}
		seen[a] = true
	}
	if err := nstest.Ping(t.Context(), ctrs[0].ns, got[len(got)-1]); err != nil {
		t.Errorf("node 1's first container -> node 2's last: %v", err)
	}
}

// TestOverlay: an overlay on a real etcd across two nodes: containers get
// distinct addresses from the shared pool, reach each other across the
// nodes, and resolve each other by name (127.0.0.11 in each container);
// a name taken on one node is refused on the other; DEL and GC.
func TestOverlay(t *testing.T) {
	t.Parallel()
	topo := nstest.Underlay(t, 2)
	endpoint := underlayEtcd(t, topo)
	ctx := t.Context()

	var ctrs []*ctr
	var nodes []*node
	var lists []*libcni.NetworkConfigList
	var addrs []netip.Addr
	for i, h := range topo.Hosts {
		n := newNode(t, h.NS)
		list := n.netList("tover", map[string]any{"mode": "overlay", "vni": 4242,
			"subnets":  []map[string]string{{"subnet": "10.30.0.0/24"}},
			"nodeName": fmt.Sprintf("node%d", i+1), "vtep": h.Addr.Addr().String(),
			"store": "etcd", "etcd": map[string]any{"endpoints": []string{endpoint}},
			"dnsServer": true, "dnsUpstreams": []string{}})
		name := []string{"alpha", "beta"}[i]
		c := n.container("ov-"+name, map[string]any{"aliases": []string{name, name + "-svc"}})
		r := n.add(list, c)
		if len(r.DNS.Nameservers) != 1 || r.DNS.Nameservers[0] != "127.0.0.11" {
			t.Errorf("result DNS %+v", r.DNS)
		}
		// The result names every interface the plugin made: the overlay's
		// and the egress one on the node's gateway bridge, which has the
		// default route.
		var inCtr []string
		for _, itf := range r.Interfaces {
			if itf.Sandbox != "" {
				inCtr = append(inCtr, itf.Name)
			}
		}
		links := nstest.LinkNames(t, c.ns)
		if len(inCtr) != 2 || len(links) != 3 || len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
			t.Errorf("result interfaces in the container %v (the container has %v), routes %v", inCtr, links, r.Routes)
		}
		ctrs, nodes, lists, addrs = append(ctrs, c), append(nodes, n), append(lists, list), append(addrs, addrOf(t, r))
	}
	if err := nodes[0].cni.GetStatusNetworkList(ctx, lists[0]); err != nil {
		t.Errorf("STATUS with etcd up: %v", err)
	}
	if addrs[0] == addrs[1] {
		t.Fatalf("both containers got %s", addrs[0])
	}
	if err := pingWithin(ctx, ctrs[0].ns, addrs[1]); err != nil {
		t.Errorf("alpha (node1) -> beta (node2): %v", err)
	}
	if err := pingWithin(ctx, ctrs[1].ns, addrs[0]); err != nil {
		t.Errorf("beta (node2) -> alpha (node1): %v", err)
	}
	lo := netip.MustParseAddr("127.0.0.11")
	var got []netip.Addr
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, err = lookup(ctx, ctrs[0].ns, lo, "beta"); err == nil {
			break
		}
	}
	if err != nil || len(got) != 1 || got[0] != addrs[1] {
		t.Errorf("alpha resolves beta across the nodes: %v %v, want %s", got, err, addrs[1])
	}
	// Its second alias too: every name of the container is served on every node.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, err = lookup(ctx, ctrs[0].ns, lo, "beta-svc"); err == nil {
			break
		}
	}
	if err != nil || len(got) != 1 || got[0] != addrs[1] {
		t.Errorf("alpha resolves beta's alias beta-svc across the nodes: %v %v, want %s", got, err, addrs[1])
	}
	if err := checkAttachment(nodes[0], lists[0], ctrs[0]); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// The name beta is node2's container's: node1 cannot take it.
	dup := nodes[0].container("ov-dup", map[string]any{"aliases": []string{"beta"}})
	_, err = nodes[0].cni.AddNetworkList(ctx, lists[0], dup.rt)
	if te := cniErr(t, err); te.Code != cniconf.ErrAddrInUse {
		t.Errorf("a second beta: %d %q", te.Code, te.Msg)
	}
	// DEL on node2 (twice): alpha no longer reaches beta, nor its name.
	nodes[1].del(lists[1], ctrs[1])
	nodes[1].del(lists[1], ctrs[1])
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err = lookup(ctx, ctrs[0].ns, lo, "beta"); err != nil {
			break
		}
	}
	if err == nil {
		t.Error("beta still resolves after its DEL")
	}
	// Now node1 may take the name.
	nodes[0].add(lists[0], dup)
}

// pingWithin pings until an answer comes, for up to 5 s: a remote
// endpoint is programmed when the watch delivers it.
func pingWithin(ctx context.Context, ns *netns.NS, dst netip.Addr) error {
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if err = nstest.Ping(ctx, ns, dst); err == nil {
			return nil
		}
	}
	return err
}
