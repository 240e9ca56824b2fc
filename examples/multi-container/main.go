//go:build linux

// Command multi-container reproduces a multi-container
// application: a web service on :5000, published as `-p 5000:5000`, counts
// its hits in a key-value service (Redis in the guide) that it reaches by
// the name in REDIS_HOST, resolved by nsnet's embedded DNS server on
// 127.0.0.11 in the web container; an outside client reaches the web service through the host's
// uplink address and sees the count go up. Both services are small Go
// programs running in the containers' namespaces.
//
//	go run ./examples/multi-container    # as root
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
	"github.com/vishvananda/netlink"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	out, err := env.Outside(ctx)
	if !log.OK("the host's uplink eth0 198.51.100.1, the outside at 198.51.100.254", err) {
		return err
	}
	// docker network create app (compose's default network)
	subnet := netip.MustParsePrefix("172.20.0.0/16")
	app, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "app", Subnets: []ipam.SubnetConfig{{Subnet: subnet}}})
	if !log.OK("docker network create app", err) {
		return err
	}
	defer app.Delete(ctx, true)
	if err := nat.Masquerade(ctx, host, nat.Network{Bridge: app.Config().Bridge, Subnets: []netip.Prefix{subnet}}); err != nil {
		return err
	}
	attach := func(id string) (*netns.NS, netip.Addr, error) {
		ns, err := env.Container()
		if err != nil {
			return nil, netip.Addr{}, err
		}
		ep, err := app.Attach(ctx, bridge.EndpointConfig{ID: id, NS: ns, DefaultRoute: true})
		if err != nil {
			return nil, netip.Addr{}, err
		}
		return ns, ep.Addrs[0].Addr(), nil
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	redis, redisAddr, err := attach("redis")
	if !log.OK("docker run --name redis --network app: "+redisAddr.String(), err) {
		return err
	}
	kv, err := redis.Listen("tcp", ":6379")
	if err != nil {
		return err
	}
	defer kv.Close()
	wg.Go(func() { serveKV(kv) })

	web, webAddr, err := attach("web")
	if !log.OK("docker run --name web --network app -e REDIS_HOST=redis -p 5000:5000: "+webAddr.String(), err) {
		return err
	}
	// The embedded DNS server: the app network's names, served to web on
	// 127.0.0.11 (no upstreams: nothing to forward in this example).
	dns, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{}})
	if err != nil {
		return err
	}
	defer dns.Close()
	err = errors.Join(dns.AddNetwork("app", []netip.Prefix{subnet}, false),
		dns.Register("app", dnsd.Endpoint{Name: "redis", Addrs: []netip.Addr{redisAddr}}),
		dns.Register("app", dnsd.Endpoint{Name: "web", Addrs: []netip.Addr{webAddr}}))
	if err != nil {
		return err
	}
	ln53, err := dns.ListenContainer(ctx, web, []netip.Addr{webAddr})
	if !log.OK("web's resolver: 127.0.0.11:53", err) {
		return err
	}
	defer ln53.Close()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return web.Dial(ctx, nil, network, "127.0.0.11:53")
	}}
	redisHost := "redis" // REDIS_HOST
	got, err := resolver.LookupNetIP(ctx, "ip4", redisHost)
	log.OK(fmt.Sprintf("web resolves %s to %v", redisHost, got), check.Expect(err, len(got) != 1 || got[0] != redisAddr, "want %s", redisAddr))
	ln, err := web.Listen("tcp", ":5000")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := incr(r.Context(), web, resolver, redisHost, "hits")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "Hello World! I have been seen %d times.\n", n)
	})}
	defer srv.Close()
	wg.Go(func() { srv.Serve(ln) })

	mp, err := portmap.New(host, portmap.Config{})
	if err != nil {
		return err
	}
	defer mp.Close()
	m, err := mp.Add(ctx, portmap.Mapping{HostPort: 5000, CtrAddr: webAddr, CtrPort: 5000, ID: "web"})
	if !log.OK("published "+m.String(), err) {
		return err
	}
	defer mp.Remove(ctx, m)

	// curl http://198.51.100.1:5000/ from outside, twice.
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return out.NS.Dial(ctx, nil, network, addr)
		},
		DisableKeepAlives: true,
	}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	url := "http://" + netip.AddrPortFrom(out.Uplink, 5000).String() + "/"
	for want := 1; want <= 2; want++ {
		body, err := get(ctx, client, url)
		log.OK(fmt.Sprintf("curl %s: %q", url, strings.TrimSpace(body)),
			check.Expect(err, body != fmt.Sprintf("Hello World! I have been seen %d times.\n", want), "want the count %d", want))
	}
	// Even a machine on the uplink that routes the app's subnet to the
	// host does not reach redis, which is not published.
	oh, err := out.NS.Netlink()
	if err != nil {
		return err
	}
	if err := oh.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), subnet.Addr().BitLen())}, Gw: out.Uplink.AsSlice()}); err != nil {
		return err
	}
	probe, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = get(probe, client, "http://"+netip.AddrPortFrom(redisAddr, 6379).String()+"/")
	log.Refused("the outside, routing 172.20.0.0/16 via the host, reaches redis", err)
	return nil
}

func get(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New(resp.Status)
	}
	return string(b), err
}

// serveKV is the key-value service: one "INCR key" per line, answered with
// the key's new value.
func serveKV(l net.Listener) {
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				cmd, key, ok := strings.Cut(sc.Text(), " ")
				if !ok || cmd != "INCR" {
					fmt.Fprintln(c, "ERR unknown command")
					continue
				}
				mu.Lock()
				counts[key]++
				n := counts[key]
				mu.Unlock()
				fmt.Fprintln(c, n)
			}
		})
	}
}

// incr is the web service's client of the key-value service, dialling
// host (a name, looked up anew each time) from the web container.
func incr(ctx context.Context, from *netns.NS, r *net.Resolver, host, key string) (int, error) {
	addrs, err := r.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return 0, err
	}
	c, err := from.Dial(ctx, nil, "tcp", netip.AddrPortFrom(addrs[0], 6379).String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "INCR %s\n", key); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(line))
}
