//go:build linux

// Command overlay reproduces an overlay network across hosts
// with a shared store, twice: on a real etcd server (started in a
// namespace of its own by the example), and on nsnet's embedded file store. Three hosts share an
// underlay segment; the overlay 172.30.0.0/16 (gateway 172.30.0.254),
// created on one host, exists on all of them; containers on different
// hosts get distinct addresses, resolve each other by name, reach each
// other across hosts, and reach the network beyond their hosts.
//
//	go run ./examples/overlay    # as root
package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	"github.com/nsnet/nsnet/overlay"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log := env.Log
	hosts, err := env.Underlay(ctx, 3)
	if !log.OK("three hosts on one underlay segment, 198.18.0.1-3", err) {
		return err
	}
	dir, err := os.MkdirTemp("", "nsnet-overlay-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// On etcd: each host has its own client, as separate machines would.
	srv, err := etcdtest.Launch(filepath.Join(dir, "etcd"))
	if !log.OK("an etcd server, in a namespace of its own", err) {
		return err
	}
	defer srv.Close()
	err = s11(ctx, env, hosts, "etcd", 4096, func() (ipam.Store, func(), error) {
		c, err := srv.NewClient()
		if err != nil {
			return nil, nil, err
		}
		s, err := etcdstore.New(c, "nsnet/")
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return s, func() { c.Close() }, nil
	})
	if err != nil {
		return err
	}

	// On the embedded store: the file store, one for the machine.
	fs, err := ipam.OpenFileStore(filepath.Join(dir, "store"))
	if err != nil {
		return err
	}
	defer fs.Close()
	return s11(ctx, env, hosts, "the embedded file store", 4097, func() (ipam.Store, func(), error) {
		return fs, func() {}, nil
	})
}

// s11 runs the scenario with each host's store from newStore.
func s11(ctx context.Context, env check.Env, hosts []check.UnderlayHost, kind string, vni uint32, newStore func() (ipam.Store, func(), error)) error {
	log := env.Log
	log.Printf("--- on %s", kind)
	var joined []*overlay.Host
	var servers []*dnsd.Server
	defer func() {
		for _, h := range joined {
			h.Close(context.Background())
		}
	}()
	for i, uh := range hosts {
		store, done, err := newStore()
		if err != nil {
			return err
		}
		defer done()
		alloc, err := ipam.New(store, ipam.Config{})
		if err != nil {
			return err
		}
		// Each host's embedded DNS server, kept up to date by the overlay.
		dns, err := dnsd.New(dnsd.Config{NS: uh.NS, Upstreams: []netip.AddrPort{}})
		if err != nil {
			return err
		}
		defer dns.Close()
		servers = append(servers, dns)
		h, err := overlay.Join(ctx, overlay.HostConfig{NS: uh.NS, Name: fmt.Sprint("host", i+1), VTEP: uh.Addr, Store: store, Alloc: alloc, DNS: dns})
		if !log.OK(fmt.Sprintf("host%d joins (VTEP %s)", i+1, uh.Addr), err) {
			return err
		}
		joined = append(joined, h)
	}

	// docker network create -d overlay --subnet 172.30.0.0/16 --gateway 172.30.0.254 ov (on host1)
	cfg := overlay.Config{Name: "ov", VNI: vni, Subnets: []ipam.SubnetConfig{{
		Subnet: netip.MustParsePrefix("172.30.0.0/16"), Gateway: netip.MustParseAddr("172.30.0.254")}}}
	if _, err := joined[0].Create(ctx, cfg); !log.OK(fmt.Sprintf("host1 creates overlay ov, VNI %d", vni), err) {
		return err
	}
	defer joined[0].Delete(context.Background(), "ov")

	var ctrs []*netns.NS
	var addrs []netip.Addr
	for i, h := range joined {
		n, err := h.Network(ctx, "ov")
		if !log.OK(fmt.Sprintf("host%d has ov", i+1), err) {
			return err
		}
		ctr, err := env.Container()
		if err != nil {
			return err
		}
		id := fmt.Sprint("c", i+1)
		ep, err := n.Attach(ctx, overlay.EndpointConfig{ID: id, NS: ctr})
		if !log.OK(fmt.Sprintf("docker run --network ov --name %s on host%d: %v, MTU %d", id, i+1, ep.Addrs, ep.MTU), err) {
			return err
		}
		defer n.Detach(context.Background(), id)
		ctrs, addrs = append(ctrs, ctr), append(addrs, ep.Addrs[0].Addr())
	}
	log.OK("the three got distinct addresses", check.Expect(nil, addrs[0] == addrs[1] || addrs[1] == addrs[2] || addrs[0] == addrs[2], "%v", addrs))
	for i := range ctrs {
		j := (i + 1) % len(ctrs)
		// The other host's control plane programs a new container a little
		// later (milliseconds; more on a loaded machine): ask again until
		// it has, as a client of a just-started service would.
		log.OK(fmt.Sprintf("c%d pings c%d across hosts", i+1, j+1), check.Eventually(ctx, func() error { return nstest.Ping(ctx, ctrs[i], addrs[j]) }))
	}
	ln, err := servers[0].ListenContainer(ctx, ctrs[0], []netip.Addr{addrs[0]})
	if err != nil {
		return err
	}
	defer ln.Close()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return ctrs[0].Dial(ctx, nil, network, "127.0.0.11:53")
	}}
	var got []netip.Addr
	for try := 0; try < 50 && (len(got) != 1 || got[0] != addrs[2]); try++ { // the names follow the store
		got, err = resolver.LookupNetIP(ctx, "ip4", "c3")
		time.Sleep(20 * time.Millisecond)
	}
	log.OK(fmt.Sprintf("c1 on host1 resolves c3 on host3: %v", got), check.Expect(err, len(got) != 1 || got[0] != addrs[2], "want %s", addrs[2]))
	log.OK("TCP from c1 to c3, who sees c1's own address", check.Exchange(ctx, ctrs[0], ctrs[2], netip.AddrPortFrom(addrs[2], 80).String(), addrs[0].String()))
	log.OK("c2 reaches beyond its host, which masquerades it",
		check.Exchange(ctx, ctrs[1], env.Host, netip.AddrPortFrom(check.UnderlayGateway, 8080).String(), hosts[1].Addr.String()))
	return nil
}
