//go:build linux

// Command user-networks reproduces user-defined bridge
// networks: `docker network create` with the next free subnet, with a given
// subnet and gateway and ip-range, a static --ip, isolation between
// networks, and a network that cannot be removed while in use.
//
//	go run ./examples/user-networks    # as root
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	// The host forwards between its interfaces: isolation must come from
	// nsnet's rules, not from a lack of routing.
	if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	prefix, addr := netip.MustParsePrefix, netip.MustParseAddr
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	create := func(cfg bridge.Config) (*bridge.Network, error) {
		n, err := bridge.New(ctx, host, env.Alloc, cfg)
		if err == nil {
			cleanup = append(cleanup, func() { n.Delete(context.WithoutCancel(ctx), true) })
		}
		return n, err
	}
	container := func(n *bridge.Network, id string, static ...netip.Addr) (*netns.NS, bridge.Endpoint, error) {
		ctr, err := env.Container()
		if err != nil {
			return nil, bridge.Endpoint{}, err
		}
		ep, err := n.Attach(ctx, bridge.EndpointConfig{ID: id, NS: ctr, Addrs: static, DefaultRoute: true})
		return ctr, ep, err
	}

	if _, err := create(bridge.Config{Name: "bridge", Bridge: "docker0"}); !log.OK("docker0 takes the first default pool, 172.17.0.0/16", err) {
		return err
	}
	mynet, err := create(bridge.Config{Name: "mynet"})
	if !log.OK("docker network create mynet", err) {
		return err
	}
	s := mynet.Config().Subnets[0]
	log.OK("mynet got the next free subnet 172.18.0.0/16, gateway .1 ("+s.Subnet.String()+" gw "+s.Gateway.String()+", bridge "+mynet.Config().Bridge+")",
		check.Expect(nil, s.Subnet != prefix("172.18.0.0/16") || s.Gateway != addr("172.18.0.1"), "wrong"))

	net10, err := create(bridge.Config{Name: "net10", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.10.0.0/16"), Gateway: addr("172.10.0.1")}}})
	if !log.OK("docker network create --subnet 172.10.0.0/16 --gateway 172.10.0.1 net10", err) {
		return err
	}
	net21, err := create(bridge.Config{Name: "net21", Subnets: []ipam.SubnetConfig{{Subnet: prefix("172.21.0.0/16"), Gateway: addr("172.21.0.254"), IPRange: prefix("172.21.100.0/24")}}})
	if !log.OK("docker network create --subnet 172.21.0.0/16 --gateway 172.21.0.254 --ip-range 172.21.100.0/24 net21", err) {
		return err
	}
	c21, e21, err := container(net21, "c21")
	if !log.OK("a container on net21 gets "+e21.Addrs[0].String()+", in the ip-range", check.Expect(err, !prefix("172.21.100.0/24").Contains(e21.Addrs[0].Addr()), "outside the range")) {
		return err
	}
	log.OK("it reaches its gateway 172.21.0.254", nstest.Ping(ctx, c21, addr("172.21.0.254")))

	c10, e10, err := container(net10, "c10", addr("172.10.0.100"))
	log.OK("docker run --network net10 --ip 172.10.0.100", check.Expect(err, e10.Addrs[0].Addr() != addr("172.10.0.100"), "got %v", e10.Addrs))
	_, _, err = container(net10, "c10b", addr("172.10.0.100"))
	log.Refused("a second container with --ip 172.10.0.100", err)

	log.Refused("net10 reaches net21 (isolation)", nstest.Ping(ctx, c10, e21.Addrs[0].Addr()))
	log.Refused("net21 reaches net10 (isolation)", nstest.Ping(ctx, c21, e10.Addrs[0].Addr()))
	log.OK("the host reaches both", errors.Join(nstest.Ping(ctx, host, e10.Addrs[0].Addr()), nstest.Ping(ctx, host, e21.Addrs[0].Addr())))

	err = net10.Delete(ctx, false)
	log.OK(fmt.Sprintf("docker network rm net10 is refused while c10 is attached (%v)", err), check.Expect(nil, !errors.Is(err, bridge.ErrInUse), "got %v", err))
	if err := net10.Detach(ctx, "c10"); err != nil {
		return err
	}
	log.OK("after c10 leaves, docker network rm net10", net10.Delete(ctx, false))
	return nil
}
