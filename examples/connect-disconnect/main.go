//go:build linux

// Command connect-disconnect reproduces `docker network
// connect net22 c1` gives c1 a second interface with an address of net22,
// and it reaches the containers of both networks; `docker network
// disconnect net22 c1` takes that interface away and leaves the other.
//
//	go run ./examples/connect-disconnect    # as root
package main

import (
	"context"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	prefix, addr := netip.MustParsePrefix, netip.MustParseAddr
	net21, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "net21", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.21.0.0/16"), IPRange: prefix("172.21.100.0/24")}}})
	if err != nil {
		return err
	}
	defer net21.Delete(ctx, true)
	net22, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "net22", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.22.0.0/16"), IPRange: prefix("172.22.100.0/24")}}})
	if err != nil {
		return err
	}
	defer net22.Delete(ctx, true)

	c1, err := env.Container()
	if err != nil {
		return err
	}
	c2, err := env.Container()
	if err != nil {
		return err
	}
	e1, err := net21.Attach(ctx, bridge.EndpointConfig{ID: "c1", NS: c1, DefaultRoute: true})
	if !log.OK("c1 on net21: eth0 "+e1.Addrs[0].String(), err) {
		return err
	}
	e2, err := net22.Attach(ctx, bridge.EndpointConfig{ID: "c2", NS: c2, DefaultRoute: true})
	if !log.OK("c2 on net22: eth0 "+e2.Addrs[0].String(), err) {
		return err
	}
	log.Refused("c1 reaches c2 before the connect", nstest.Ping(ctx, c1, e2.Addrs[0].Addr()))

	// docker network connect net22 c1
	e12, err := net22.Attach(ctx, bridge.EndpointConfig{ID: "c1", NS: c1})
	if !log.OK("docker network connect net22 c1: "+e12.IfName+" "+e12.Addrs[0].String(), check.Expect(err, e12.IfName != "eth1", "interface %s", e12.IfName)) {
		return err
	}
	log.OK("c1 reaches c2 on net22", nstest.Ping(ctx, c1, e2.Addrs[0].Addr()))
	log.OK("c1 still reaches net21's gateway", nstest.Ping(ctx, c1, addr("172.21.0.1")))

	// docker network disconnect net22 c1
	log.OK("docker network disconnect net22 c1", net22.Detach(ctx, "c1"))
	links, _ := c1.Links()
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	log.OK("c1 has eth0 and lo left", check.Expect(nil, !slices.Equal(names, []string{"eth0", "lo"}), "%v", names))
	log.Refused("c1 reaches c2 after the disconnect", nstest.Ping(ctx, c1, e2.Addrs[0].Addr()))
	log.OK("c1 still reaches net21's gateway", nstest.Ping(ctx, c1, addr("172.21.0.1")))
	return nil
}
