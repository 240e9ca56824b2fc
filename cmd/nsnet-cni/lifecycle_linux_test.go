package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

// TestCheckFindsDrift: CHECK passes after ADD and fails, naming the route,
// once the container's default route is deleted.
func TestCheckFindsDrift(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tcheck", map[string]any{"subnets": []map[string]string{{"subnet": "10.92.0.0/24"}}})
	c := n.container("ctr1", nil)
	n.add(list, c)
	ctx := t.Context()
	if err := n.cni.CheckNetworkList(ctx, list, c.rt); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	h, err := c.ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if err := h.RouteDel(&r); err != nil {
				t.Fatal(err)
			}
			deleted = true
		}
	}
	if !deleted {
		t.Fatal("the container had no default route")
	}
	err = n.cni.CheckNetworkList(ctx, list, c.rt)
	if err == nil {
		t.Fatal("CHECK passed with the default route deleted")
	}
	if te := cniErr(t, err); !strings.Contains(te.Msg, "route to 0.0.0.0/0 via 10.92.0.1 is gone") {
		t.Errorf("CHECK error %q does not name the route", te.Msg)
	}
	n.del(list, c)
	// CHECK of what is not attached is an error too.
	if err := n.cni.CheckNetworkList(ctx, list, c.rt); err == nil {
		t.Error("CHECK passed after DEL")
	}
}

// TestDelAfterNetnsGone: the container's namespace is gone before DEL,
// which succeeds and frees the veth and the address.
func TestDelAfterNetnsGone(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tgone", map[string]any{"subnets": []map[string]string{{"subnet": "10.93.0.0/29"}}})
	c := n.container("ctr1", nil, [2]string{"IgnoreUnknown", "1"})
	r := n.add(list, c)
	hostVeth := r.Interfaces[0].Name
	c.ns.Close() // the last reference: the namespace, and the veth, go
	waitGone(t, n, hostVeth)
	n.del(list, c)
	n.del(list, c)
	// CNI_NETNS empty, as runtimes send when the namespace is gone.
	c.rt.NetNS = ""
	n.del(list, c)
	// The address is free again: a /29 holds 5 containers, so 6 ADDs
	// after this DEL would fail if it had leaked.
	for i := range 5 {
		n.add(list, n.container(fmt.Sprintf("fill%d", i), nil))
	}
}

func waitGone(t *testing.T, n *node, link string) {
	t.Helper()
	h, err := n.host.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := h.LinkByName(link); err != nil {
			return
		}
	}
	t.Fatalf("%s still there", link)
}

// TestGCRemovesLeaked: an attachment the runtime forgot (its libcni cache
// gone) is removed by GC, since it is not among the valid attachments;
// the valid one stays and keeps working.
func TestGCRemovesLeaked(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	list := n.netList("tgc", map[string]any{"subnets": []map[string]string{{"subnet": "10.94.0.0/24"}},
		"dnsServer": true, "dnsUpstreams": []string{}})
	leak := n.container("leaked", map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}},
		"aliases": []string{"leaky"}})
	keep := n.container("kept", nil)
	rl := n.add(list, leak)
	n.add(list, keep)
	// The runtime loses its cache: libcni's GC would not DEL the leaked
	// attachment itself, so only the plugin's GC can.
	if err := os.RemoveAll(n.cache); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	err := n.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "kept", IfName: "eth0"}}})
	if err != nil {
		t.Fatalf("GC: %v\n%s", err, n.log())
	}
	if names := nstest.LinkNames(t, leak.ns); len(names) != 1 {
		t.Errorf("leaked container after GC: links %v", names)
	}
	waitGone(t, n, rl.Interfaces[0].Name)
	if err := nstest.Ping(ctx, keep.ns, netip.MustParseAddr("10.94.0.1")); err != nil {
		t.Errorf("the kept container lost its network: %v", err)
	}
	if err := n.cni.CheckNetworkList(ctx, list, keep.rt); err != nil {
		t.Errorf("CHECK of the kept container: %v", err)
	}
	// The node loses the kept attachment's record: GC must still keep it
	// (and its network), since the runtime says it is valid.
	if err := os.Remove(filepath.Join(n.dir, "attachments", "tgc", "kept_eth0.json")); err != nil {
		t.Fatal(err)
	}
	err = n.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "kept", IfName: "eth0"}}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := nstest.Ping(ctx, keep.ns, netip.MustParseAddr("10.94.0.1")); err != nil {
		t.Errorf("GC removed a valid attachment whose record was lost: %v", err)
	}
	// The port and the name are free again.
	c := n.container("again", map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}},
		"aliases": []string{"leaky"}})
	n.add(list, c)
}

// TestStatus: STATUS succeeds with a writable state directory and a file
// store, and says "not available" (50) with the cause otherwise.
func TestStatus(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	ctx := t.Context()
	ok := n.netList("tstatus", nil)
	if err := n.cni.GetStatusNetworkList(ctx, ok); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	file := filepath.Join(n.dir, "afile")
	os.WriteFile(file, nil, 0o600)
	bad := confList(t, "tstatus", map[string]any{"stateDir": filepath.Join(file, "sub")})
	err := n.cni.GetStatusNetworkList(ctx, bad)
	if te := cniErr(t, err); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "state directory") {
		t.Errorf("STATUS with an unusable state directory: %d %q", te.Code, te.Msg)
	}
	// An etcd that does not answer (nothing listens there in the host).
	noEtcd := confList(t, "tstatus", map[string]any{"stateDir": n.dir, "store": "etcd",
		"etcd": map[string]any{"endpoints": []string{"http://127.0.0.1:1"}}})
	err = n.cni.GetStatusNetworkList(ctx, noEtcd)
	if te := cniErr(t, err); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "etcd") {
		t.Errorf("STATUS with etcd down: %d %q", te.Code, te.Msg)
	}
}

// confList is a conflist with one nsnet-cni plugin, without the cleanup
// of node.netList (for configurations that never make anything).
func confList(t testing.TB, name string, fields map[string]any) *libcni.NetworkConfigList {
	p := map[string]any{"type": "nsnet-cni",
		"capabilities": map[string]bool{"portMappings": true, "aliases": true, "ips": true, "mac": true, "dns": true}}
	for k, v := range fields {
		p[k] = v
	}
	b, _ := jsonMarshal(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{p}})
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	return list
}

// TestBadConfigs: configurations and arguments the plugin cannot take are
// CNI errors with the spec's codes, naming the cause, and touch nothing.
func TestBadConfigs(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	for _, tc := range []struct {
		name   string
		fields map[string]any
		caps   map[string]any
		code   uint
		msg    string
	}{
		{"mode", map[string]any{"mode": "ipvlan"}, nil, types.ErrInvalidNetworkConfig, `mode "ipvlan"`},
		{"subnet", map[string]any{"subnets": []map[string]string{{"subnet": "10.1.2.3/24"}}}, nil, types.ErrInvalidNetworkConfig, "subnets"},
		{"gateway", map[string]any{"subnets": []map[string]string{{"subnet": "10.1.2.0/24", "gateway": "10.9.9.9"}}}, nil, types.ErrInvalidNetworkConfig, "subnets"},
		{"no parent", map[string]any{"mode": "macvlan"}, nil, types.ErrInvalidNetworkConfig, "parent"},
		{"overlay vni", map[string]any{"mode": "overlay", "subnets": []map[string]string{{"subnet": "10.1.2.0/24"}}}, nil, types.ErrInvalidNetworkConfig, "vni"},
		{"store", map[string]any{"store": "consul"}, nil, types.ErrInvalidNetworkConfig, "consul"},
		{"etcd", map[string]any{"store": "etcd"}, nil, types.ErrInvalidNetworkConfig, "etcd.endpoints"},
		{"state dir", map[string]any{"stateDir": "relative/dir"}, nil, types.ErrInvalidNetworkConfig, "absolute"},
		{"ips", nil, map[string]any{"ips": []string{"10.1.2.300"}}, types.ErrInvalidNetworkConfig, `"10.1.2.300"`},
		{"mac", nil, map[string]any{"mac": "01:00:5e:00:00:01"}, types.ErrInvalidNetworkConfig, "mac"},
		{"port", nil, map[string]any{"portMappings": []map[string]any{{"hostPort": 70000, "containerPort": 80}}}, types.ErrInvalidNetworkConfig, "portMappings[0]"},
		{"protocol", nil, map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}}}, types.ErrInvalidNetworkConfig, "icmp"},
		{"alias", nil, map[string]any{"aliases": []string{"not a label"}}, types.ErrInvalidNetworkConfig, "aliases"},
		{"overlay ips", map[string]any{"mode": "overlay", "vni": 42, "subnets": []map[string]string{{"subnet": "10.1.2.0/24"}}},
			map[string]any{"ips": []string{"10.1.2.5"}}, types.ErrUnsupportedField, "ips"},
		{"static outside", map[string]any{"subnets": []map[string]string{{"subnet": "10.95.0.0/24"}}},
			map[string]any{"ips": []string{"10.96.0.5"}}, types.ErrInvalidNetworkConfig, "10.96.0.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := map[string]any{"stateDir": n.dir}
			for k, v := range tc.fields {
				fields[k] = v
			}
			list := confList(t, "tbad", fields)
			c := n.container("bad", tc.caps)
			_, err := n.cni.AddNetworkList(t.Context(), list, c.rt)
			if err == nil {
				n.cni.DelNetworkList(context.Background(), list, c.rt)
				t.Fatal("ADD succeeded")
			}
			te := cniErr(t, err)
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.msg) {
				t.Errorf("error %d %q, want code %d naming %q", te.Code, te.Msg, tc.code, tc.msg)
			}
			if names := nstest.LinkNames(t, c.ns); len(names) != 1 {
				t.Errorf("the container has links %v after a failed ADD", names)
			}
		})
	}
	// A bad cniVersion is refused by the plugin's version check.
	list := confList(t, "tbad", map[string]any{"stateDir": n.dir})
	list.CNIVersion = "0.3.1"
	for _, p := range list.Plugins {
		p.Network.CNIVersion = "0.3.1"
	}
	_, err := n.cni.AddNetworkList(t.Context(), list, n.container("v", nil).rt)
	if err == nil {
		t.Error("ADD with cniVersion 0.3.1 succeeded")
	}
	// The one that got as far as the daemon left the network on the
	// node: GC with nothing valid takes it away.
	t.Cleanup(func() {
		n.cni.GCNetworkList(context.Background(), confList(t, "tbad", map[string]any{"stateDir": n.dir,
			"subnets": []map[string]string{{"subnet": "10.95.0.0/24"}}}), &libcni.GCArgs{})
	})
}

// TestDaemonOtherNamespace: a state directory belongs to one node
// namespace; a plugin called from another one is refused, naming both,
// rather than wiring containers to the wrong host.
func TestDaemonOtherNamespace(t *testing.T) {
	t.Parallel()
	a, b := nstest.Host(t), nstest.Host(t)
	na := newNode(t, a)
	list := na.netList("tother", map[string]any{"subnets": []map[string]string{{"subnet": "10.86.0.0/24"}}})
	na.add(list, na.container("c1", nil))
	nb := &node{t: t, host: b, dir: na.dir, cache: t.TempDir()}
	nb.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t)}, nb.cache, &hostExec{host: b})
	c := nb.container("c2", nil)
	_, err := nb.cni.AddNetworkList(t.Context(), list, c.rt)
	if te := cniErr(t, err); !strings.Contains(te.Msg, "runs in network namespace") {
		t.Errorf("ADD from another namespace: %d %q", te.Code, te.Msg)
	}
	if names := nstest.LinkNames(t, c.ns); len(names) != 1 {
		t.Errorf("links %v", names)
	}
}
