package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/nsnet/nsnet/netns/nstest"
)

// exampleList loads an example conflist of ./examples with the fields
// that are the machine's (the state directory, etcd's address, the node's
// name and underlay address) replaced by the test's, and registers the
// cleanup GC of node.netList.
func (n *node) exampleList(file string, override map[string]any) *libcni.NetworkConfigList {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join("examples", file))
	if err != nil {
		n.t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		n.t.Fatalf("%s: %v", file, err)
	}
	plugins := raw["plugins"].([]any)
	p := plugins[0].(map[string]any)
	fields := map[string]any{}
	for k, v := range p {
		fields[k] = v
	}
	for k, v := range override {
		fields[k] = v
	}
	if _, err := libcni.NetworkConfFromBytes(b); err != nil {
		n.t.Fatalf("%s as it is: %v", file, err)
	}
	return n.netList(raw["name"].(string), fields)
}

// TestExampleBridgeConflist: examples/bridge.conflist, with the test's
// state directory: a published port from outside and names between
// containers.
func TestExampleBridgeConflist(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	out := nstest.NewOutside(t, host)
	n := newNode(t, host)
	list := n.exampleList("bridge.conflist", map[string]any{"stateDir": n.dir, "dnsUpstreams": []string{}})
	web := n.container("web", map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}},
		"aliases": []string{"web"}})
	client := n.container("client", map[string]any{"aliases": []string{"client"}})
	rw, rc := n.add(list, web), n.add(list, client)
	if !strings.HasPrefix(addrOf(t, rw).String(), "10.88.") {
		t.Errorf("address %s not in 10.88.0.0/16", addrOf(t, rw))
	}
	ctx := t.Context()
	nstest.Serve(t, web.ns, "tcp", "0.0.0.0:80")
	if r, err := nstest.Exchange(ctx, out.NS, "tcp", netip.AddrPortFrom(out.HostAddr.Addr(), 8080).String(), "hi"); err != nil || r.Peer.Addr() != out.Addr {
		t.Errorf("outside -> published 8080: %+v %v", r, err)
	}
	gw := netip.MustParseAddr(rc.DNS.Nameservers[0])
	if got, err := lookup(ctx, client.ns, gw, "web"); err != nil || got[0] != addrOf(t, rw) {
		t.Errorf("client resolves web: %v %v", got, err)
	}
	if r, err := nstest.Exchange(ctx, client.ns, "tcp", fmt.Sprintf("%s:80", addrOf(t, rw)), "hi"); err != nil || r.Peer.Addr() != addrOf(t, rc) {
		t.Errorf("client -> web: %+v %v", r, err)
	}
}

// TestChained: nsnet-cni after another plugin gets its result as
// prevResult and returns both, its interfaces after the others'; and a
// conflist of cniVersion 0.4.0 gets a 0.4.0 result, and CHECK.
func TestChained(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	n := newNode(t, host)
	// A first plugin of the chain: a script that reports an interface and
	// an address of its own.
	bin := t.TempDir()
	script := `#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  printf '%s' '{"cniVersion":"1.1.0","interfaces":[{"name":"first0","mac":"02:00:00:00:00:01"}],"ips":[{"address":"192.0.2.5/24","interface":0}]}'
elif [ "$CNI_COMMAND" = VERSION ]; then
  printf '%s' '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}'
fi
`
	if err := os.WriteFile(filepath.Join(bin, "first"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	n.cni.Path = append([]string{bin}, n.cni.Path...)
	p := map[string]any{"type": "nsnet-cni", "stateDir": n.dir, "subnets": []map[string]string{{"subnet": "10.87.0.0/24"}}}
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "tchain", "plugins": []any{map[string]any{"type": "first"}, p}})
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	n.netList("tchain", p) // the cleanup GC
	c := n.container("chained", nil)
	r := n.add(list, c)
	if len(r.Interfaces) != 3 || r.Interfaces[0].Name != "first0" || r.Interfaces[2].Name != "eth0" {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	if len(r.IPs) != 2 || r.IPs[0].Address.String() != "192.0.2.5/24" || *r.IPs[1].Interface != 2 {
		t.Errorf("IPs %v", r.IPs)
	}
	if err := n.cni.CheckNetworkList(t.Context(), list, c.rt); err != nil {
		t.Errorf("CHECK with prevResult: %v", err)
	}
	n.del(list, c)

	// cniVersion 0.4.0.
	b, _ = json.Marshal(map[string]any{"cniVersion": "0.4.0", "name": "tchain", "plugins": []any{p}})
	old, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	c2 := n.container("old", nil)
	res, err := n.cni.AddNetworkList(t.Context(), old, c2.rt)
	if err != nil {
		t.Fatalf("ADD 0.4.0: %v", err)
	}
	if res.Version() != "0.4.0" {
		t.Errorf("result version %s", res.Version())
	}
	if err := n.cni.CheckNetworkList(t.Context(), old, c2.rt); err != nil {
		t.Errorf("CHECK 0.4.0: %v", err)
	}
	if err := n.cni.DelNetworkList(t.Context(), old, c2.rt); err != nil {
		t.Errorf("DEL 0.4.0: %v", err)
	}
}
