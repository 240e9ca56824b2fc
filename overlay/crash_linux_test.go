package overlay_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// crashEnv makes the test binary a crash child (see TestMain).
const crashEnv = "NSNET_OVERLAY_CRASH"

// crashNet is the network the crash test works on.
var crashNet = overlay.Config{Name: "ov", VNI: 0xc4, Subnets: subnets("10.96.0.0/24"), Internal: true}

// crashChild is the process of host1 that the crash test kills: it joins
// the overlays as host1 (on etcd, across the underlay), says "ready", runs
// one call (NSNET_OP) and says "done" with its error. At step NSNET_STEP
// of the call, if set, it says "at STEP" and waits to be killed.
func crashChild() {
	fail := func(err error) {
		fmt.Println("err", err)
		os.Exit(0)
	}
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		fail(err)
	}
	store, err := storeFrom(host)
	if err != nil {
		fail(err)
	}
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		fail(err)
	}
	at := os.Getenv("NSNET_STEP")
	overlay.SetStepHook(crashNet.Name, func(s string) error {
		if s == at {
			fmt.Println("at", s)
			select {}
		}
		return nil
	})
	ctx := context.Background()
	h, err := overlay.Join(ctx, overlay.HostConfig{NS: host, Name: "host1",
		VTEP: netip.MustParseAddr(os.Getenv("NSNET_VTEP")), Store: store, Alloc: alloc})
	if err != nil {
		fail(err)
	}
	fmt.Println("ready")
	switch os.Getenv("NSNET_OP") {
	case "create":
		_, err = h.Create(ctx, crashNet)
	case "delete":
		err = h.Delete(ctx, crashNet.Name)
	default:
		var n *overlay.Network
		if n, err = h.Network(ctx, crashNet.Name); err != nil {
			break
		}
		if os.Getenv("NSNET_OP") == "attach" {
			var ctr *netns.NS
			if ctr, err = netns.Open(os.Getenv("NSNET_CTR")); err == nil {
				_, err = n.Attach(ctx, overlay.EndpointConfig{ID: "c1", NS: ctr})
			}
		} else {
			err = n.Detach(ctx, "c1")
		}
	}
	fmt.Println("done", err)
	os.Exit(0)
}

// storeFrom is the crash test's etcd store, dialled from host across the
// underlay.
func storeFrom(host *netns.NS) (ipam.Store, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://" + netip.AddrPortFrom(etcdtest.UnderlayAddr, etcdtest.ClientPort).String()},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return host.Dial(ctx, nil, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	return etcdstore.New(c, "nsnet/")
}

// crashPoints are the steps of each call at which the harness kills it.
var crashPoints = map[string][]string{
	"create": {"pool", "define", "bridge", "filter", "vxlan"},
	"attach": {"claim", "allocate", "publish", "veth", "mark", "port", "address"},
	"detach": {"unpublish", "veth", "release"},
	"delete": {"checked", "define"},
}

// crashModel is the acknowledged state: the network, c1 on host1, c2 on
// host2.
type crashModel struct{ net, c1, c2 bool }

// TestCrashPoints kills host1's process (SIGKILL) at every step of Create,
// Attach, Detach and Delete, three rounds, and then at random moments of
// random calls, over 100 kills in all, on a real etcd server across the
// underlay. After the documented recovery (Join again; GC with the live
// endpoints; the killed network call issued again; Create and Attach of
// what is live), host1's links, its FDB and neighbour entries, its VXLAN
// ingress filter and the store equal a model of the acknowledged calls, and
// endpoints attached again on both hosts pass traffic.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	topo := nstest.Underlay(t, 2)
	srv.Attach(t, topo)
	host1, host2 := topo.Hosts[0], topo.Hosts[1]
	store := etcdStore(t, srv.ClientFrom(t, host1.NS))
	alloc, err := ipam.New(store, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	store2 := etcdStore(t, srv.ClientFrom(t, host2.NS))
	alloc2, err := ipam.New(store2, ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := overlay.Join(t.Context(), overlay.HostConfig{NS: host2.NS, Name: "host2", VTEP: host2.Addr.Addr(), Store: store2, Alloc: alloc2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h2.Close(context.Background()) })
	c1, c2 := nstest.Container(t, host1.NS), nstest.Container(t, host2.NS)
	join1 := func(what string) *overlay.Host {
		t.Helper()
		h, err := overlay.Join(t.Context(), overlay.HostConfig{NS: host1.NS, Name: "host1", VTEP: host1.Addr.Addr(), Store: store, Alloc: alloc})
		if err != nil {
			t.Fatalf("%s: Join: %v", what, err)
		}
		return h
	}
	network := func(what string, h *overlay.Host) *overlay.Network {
		t.Helper()
		n, err := h.Network(t.Context(), crashNet.Name)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n
	}
	// become takes the acknowledged state from have to want, with host1's
	// process r1 and host2's, and returns c1's and c2's addresses, if
	// attached.
	var a1, a2 netip.Addr
	become := func(what string, r1 *overlay.Host, have, want crashModel) {
		t.Helper()
		detach := func(h *overlay.Host, id string) {
			if err := network(what, h).Detach(t.Context(), id); err != nil {
				t.Fatalf("%s: Detach %s: %v", what, id, err)
			}
		}
		if have.c1 && !want.c1 {
			detach(r1, "c1")
		}
		if have.c2 && !want.c2 {
			detach(h2, "c2")
		}
		if have.net && !want.net {
			if err := r1.Delete(t.Context(), crashNet.Name); err != nil {
				t.Fatalf("%s: Delete: %v", what, err)
			}
		}
		if want.net && !have.net {
			if _, err := r1.Create(t.Context(), crashNet); err != nil {
				t.Fatalf("%s: Create: %v", what, err)
			}
		}
		if want.c2 && !have.c2 {
			a2 = attachC2(t, what, h2, c2)
		}
		if want.c1 && !have.c1 {
			ep, err := network(what, r1).Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: c1})
			if err != nil {
				t.Fatalf("%s: Attach c1: %v", what, err)
			}
			a1 = ep.Addrs[0].Addr()
		}
	}
	// What each call starts from: the calls run in their natural order,
	// so that little is needed between them.
	from := map[string]crashModel{
		"create": {},
		"attach": {net: true, c2: true},
		"detach": {net: true, c1: true, c2: true},
		"delete": {net: true},
	}

	seed := uint64(time.Now().UnixNano())
	rnd := rand.New(rand.NewPCG(seed, seed))
	t.Logf("random kills with seed %d", seed)
	type kill struct{ op, at string }
	var kills []kill
	for range 3 {
		for _, op := range []string{"create", "attach", "detach", "delete"} {
			for _, at := range crashPoints[op] {
				kills = append(kills, kill{op, at})
			}
		}
	}
	ops := []string{"create", "attach", "detach", "delete"}
	interrupted := 0
	var state crashModel
	r1 := join1("start")
	t.Cleanup(func() { r1.Close(context.Background()) })
	for i := 0; i < len(kills) || interrupted < 100 && i < 400; i++ {
		k := kill{op: ops[i%len(ops)]}
		if i < len(kills) {
			k = kills[i]
		}
		what := fmt.Sprintf("kill %d, %s at %s", i, k.op, k.at)
		if k.at == "" {
			what = fmt.Sprintf("kill %d, %s at random", i, k.op)
		}
		// The acknowledged state the call starts from; then host1's
		// process is gone.
		m := from[k.op]
		become(what, r1, state, m)
		if !m.net {
			eventually(t, what+": host1 removes the network's devices", func() error {
				if l := overlayLinks(t, host1.NS); len(l) > 0 {
					return fmt.Errorf("%v left", l)
				}
				return nil
			})
		}
		r1.Crash()

		// The process, killed.
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"=1",
			fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host1.NS.Fd()),
			fmt.Sprintf("NSNET_CTR=/proc/%d/fd/%d", os.Getpid(), c1.Fd()),
			"NSNET_VTEP="+host1.Addr.Addr().String(), "NSNET_OP="+k.op, "NSNET_STEP="+k.at)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		if line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s: the child said %q, want ready", what, line)
		}
		if k.at != "" {
			line, _ = r.ReadString('\n')
			if line != "at "+k.at+"\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("%s: the child said %q, want it at %s", what, line, k.at)
			}
		} else {
			time.Sleep(time.Duration(rnd.IntN(12000)) * time.Microsecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		rest, _ := io.ReadAll(r)
		cmd.Wait()
		acked := strings.Contains(string(rest), "done <nil>")
		if !strings.Contains(string(rest), "done") {
			interrupted++
		}

		// The recovery, as the package doc says. The orchestrator issues
		// a network call it got no answer to again; an endpoint whose
		// Attach got none is not live, nor one it was detaching.
		switch k.op {
		case "create":
			m.net = true
		case "delete":
			m.net = false
		case "attach":
			m.c1 = acked
		case "detach":
			m.c1 = false
		}
		r1 = join1(what)
		var live overlay.Live
		if m.c1 {
			live.Endpoints = []overlay.LiveEndpoint{{Network: crashNet.Name, ID: "c1"}}
		}
		if _, err := r1.GC(t.Context(), live); err != nil {
			t.Fatalf("%s: GC: %v", what, err)
		}
		if !acked && (k.op == "create" || k.op == "delete") {
			var err error
			if k.op == "create" {
				_, err = r1.Create(t.Context(), crashNet)
			} else {
				err = r1.Delete(t.Context(), crashNet.Name)
			}
			if err != nil {
				t.Fatalf("%s: %s again: %v", what, k.op, err)
			}
		}
		if m.net {
			if _, err := r1.Create(t.Context(), crashNet); err != nil {
				t.Fatalf("%s: Create of the live network: %v", what, err)
			}
			if m.c1 {
				ep, err := network(what, r1).Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: c1})
				if err != nil {
					t.Fatalf("%s: Attach of the live endpoint: %v", what, err)
				}
				a1 = ep.Addrs[0].Addr()
			}
		}
		checkCrashModel(t, what, m, store, alloc, host1, host2)
		if m.net {
			n := network(what, r1)
			if err := n.Check(t.Context()); err != nil {
				t.Errorf("%s: Check after the recovery: %v", what, err)
			}
			if m.c1 {
				if err := n.CheckEndpoint(t.Context(), "c1", c1); err != nil {
					t.Errorf("%s: CheckEndpoint after the recovery: %v", what, err)
				}
			}
		}
		if t.Failed() {
			t.FailNow()
		}

		// Attaching again works, across the hosts.
		all := crashModel{net: true, c1: true, c2: true}
		become(what, r1, m, all)
		state = all
		eventually(t, what+": c1 reaches c2", func() error { return nstest.Ping(t.Context(), c1, a2) })
		eventually(t, what+": c2 reaches c1", func() error { return nstest.Ping(t.Context(), c2, a1) })
		if t.Failed() {
			t.FailNow()
		}
	}
	become("the end", r1, state, crashModel{})
	r1.Crash()
	if interrupted < 100 {
		t.Errorf("%d calls killed half way, want at least 100", interrupted)
	}
	t.Logf("%d kills, %d of them of a call half way", max(len(kills), interrupted), interrupted)
}

// attachC2 attaches c2 to the crash network on host2 and returns its
// address.
func attachC2(t *testing.T, what string, h2 *overlay.Host, c2 *netns.NS) netip.Addr {
	t.Helper()
	n, err := h2.Network(t.Context(), crashNet.Name)
	if err != nil {
		t.Fatalf("%s: host2: %v", what, err)
	}
	ep, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c2", NS: c2})
	if err != nil {
		t.Fatalf("%s: host2: Attach c2: %v", what, err)
	}
	return ep.Addrs[0].Addr()
}

// overlayLinks returns the links of ns with the overlay driver's device
// group.
func overlayLinks(t *testing.T, ns *netns.NS) []string {
	t.Helper()
	links, err := ns.Links()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().Group>>24 == 0x6f {
			out = append(out, l.Type()+" "+l.Attrs().Name)
		}
	}
	slices.Sort(out)
	return out
}

// checkCrashModel fails t unless the store, host1's links, FDB and
// neighbour entries, its VXLAN filter, and host2's entries for host1's
// endpoint hold exactly m.
func checkCrashModel(t *testing.T, what string, m crashModel, store ipam.Store, alloc *ipam.Allocator, host1, host2 *nstest.TopoHost) {
	t.Helper()
	ctx := t.Context()
	vni := fmt.Sprintf("%x", crashNet.VNI)
	// The store.
	kvs, _, err := store.List(ctx, "overlay/")
	if err != nil {
		t.Fatal(err)
	}
	var keys, wantKeys []string
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, "overlay/host/") {
			continue
		}
		keys = append(keys, kv.Key)
		var r struct{ Pending bool }
		if strings.HasPrefix(kv.Key, "overlay/ep/") && (json.Unmarshal(kv.Value, &r) != nil || r.Pending) {
			t.Errorf("%s: %s is pending", what, kv.Key)
		}
	}
	var owners []string
	if m.net {
		wantKeys = append(wantKeys, "overlay/net/ov", fmt.Sprintf("overlay/vni/%d", crashNet.VNI))
	}
	if m.c1 {
		wantKeys, owners = append(wantKeys, "overlay/ep/ov/host1/c1"), append(owners, "c1")
	}
	if m.c2 {
		wantKeys, owners = append(wantKeys, "overlay/ep/ov/host2/c2"), append(owners, "c2")
	}
	slices.Sort(keys)
	slices.Sort(wantKeys)
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("%s: the store holds %v, want %v", what, keys, wantKeys)
	}
	pools, err := alloc.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var poolNames []string
	for _, p := range pools {
		poolNames = append(poolNames, p.Name)
	}
	if m.net != slices.Equal(poolNames, []string{"overlay.ov"}) || !m.net && len(poolNames) > 0 {
		t.Errorf("%s: pools %v, want the network's: %v", what, poolNames, m.net)
	}
	var a1 netip.Addr
	var mac2 string
	if m.net {
		_, allocs, err := alloc.Inspect(ctx, "overlay.ov")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range allocs {
			got = append(got, a.Owner)
			if a.Owner == "c1" {
				a1 = a.Leases()[0].Addr.Addr()
			}
		}
		if !slices.Equal(got, owners) {
			t.Errorf("%s: allocations of %v, want %v", what, got, owners)
		}
		if m.c2 {
			kv, err := store.Get(ctx, "overlay/ep/ov/host2/c2")
			if err != nil {
				t.Fatal(err)
			}
			var r struct{ MAC string }
			json.Unmarshal(kv.Value, &r)
			mac2 = r.MAC
		}
	}
	// host1's links.
	var wantLinks []string
	if m.net {
		wantLinks = append(wantLinks, "bridge ovbr"+vni, "vxlan ovvx"+vni)
	}
	links := overlayLinks(t, host1.NS)
	veths := 0
	links = slices.DeleteFunc(links, func(l string) bool {
		if strings.HasPrefix(l, "veth ") {
			veths++
			return true
		}
		return false
	})
	if !slices.Equal(links, wantLinks) || veths != map[bool]int{false: 0, true: 1}[m.c1] {
		t.Errorf("%s: host1 has %v and %d endpoint veths, want %v and c1's: %v (all: %v)", what, links, veths, wantLinks, m.c1, nstest.LinkNames(t, host1.NS))
	}
	// host1's entries and filter.
	filters, err := nft.VXLANFilters(ctx, host1.NS)
	if err != nil {
		t.Fatal(err)
	}
	var wantFilters []nft.VXLAN
	if m.net {
		f := nft.VXLAN{VNI: crashNet.VNI, Port: overlay.DefaultPort}
		if m.c2 {
			f.Peers = []netip.Addr{host2.Addr.Addr()}
		}
		wantFilters = append(wantFilters, f)
	}
	if fmt.Sprint(filters) != fmt.Sprint(wantFilters) {
		t.Errorf("%s: host1's VXLAN filter %v, want %v", what, filters, wantFilters)
	}
	if m.net {
		got := fdbOf(t, host1.NS, "ovvx"+vni)
		var want []string
		if m.c2 {
			want = []string{"00:00:00:00:00:00 " + host2.Addr.Addr().String(), mac2 + " " + host2.Addr.Addr().String()}
			slices.Sort(want)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: host1's FDB %v, want %v", what, got, want)
		}
		if m.c1 {
			eventually(t, what+": host2 has c1's entry", func() error {
				if !neighOf(t, host2.NS, "ovvx"+vni, a1) {
					return fmt.Errorf("no entry for %s", a1)
				}
				return nil
			})
		}
	}
}

// fdbOf returns the FDB entries with a destination of the VXLAN device dev
// of ns, as "MAC VTEP", sorted.
func fdbOf(t *testing.T, ns *netns.NS, dev string) []string {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s: %v", dev, err)
	}
	fdb, err := h.NeighList(l.Attrs().Index, syscall.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range fdb {
		if n.IP != nil {
			out = append(out, n.HardwareAddr.String()+" "+n.IP.String())
		}
	}
	slices.Sort(out)
	return out
}
