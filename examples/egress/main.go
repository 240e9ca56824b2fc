//go:build linux

// Command egress reproduces outbound NAT: containers on
// docker0 (172.17.0.0/16) reach a server beyond the host's uplink, which
// sees the host's uplink address as the source; a capture on the uplink
// shows the host's address, a capture on the bridge the container's. An
// internal network gets no egress, and without its masquerade a network
// loses its egress too.
//
//	go run ./examples/egress    # as root
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/nat"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	out, err := env.Outside(ctx)
	if !log.OK("the host's uplink eth0 198.51.100.1, the outside at 198.51.100.254", err) {
		return err
	}
	subnet := netip.MustParsePrefix("172.17.0.0/16")
	docker0, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "bridge", Bridge: "docker0",
		Subnets: []ipam.SubnetConfig{{Subnet: subnet}}})
	if !log.OK("docker0 with 172.17.0.1/16", err) {
		return err
	}
	defer docker0.Delete(ctx, true)

	// iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
	masq := nat.Network{Bridge: "docker0", Subnets: []netip.Prefix{subnet}}
	if err := nat.Masquerade(ctx, host, masq); !log.OK("masquerade 172.17.0.0/16 leaving by any interface but docker0", err) {
		return err
	}
	fwd, err := host.Sysctl("net.ipv4.ip_forward")
	log.OK("ip_forward is on", check.Expect(err, fwd != "1", "net.ipv4.ip_forward = %q", fwd))

	ctr, err := env.Container()
	if err != nil {
		return err
	}
	ep, err := docker0.Attach(ctx, bridge.EndpointConfig{ID: "c1", NS: ctr, DefaultRoute: true})
	if !log.OK("docker run --name c1", err) {
		return err
	}
	ctrAddr := ep.Addrs[0].Addr()
	log.Printf("c1 is %s", ctrAddr)

	srv, err := nstest.NewServer(out.NS, "tcp", out.Addr.String()+":80")
	if err != nil {
		return err
	}
	defer srv.Close()
	onUplink, err := check.Listen(host, "eth0")
	if err != nil {
		return err
	}
	defer onUplink.Close()
	onBridge, err := check.Listen(host, "docker0")
	if err != nil {
		return err
	}
	defer onBridge.Close()

	r, err := nstest.Exchange(ctx, ctr, "tcp", srv.Addr.String(), "GET /")
	log.OK(fmt.Sprintf("c1 reaches the outside server %s, which sees %s", srv.Addr, r.Peer.Addr()),
		check.Expect(err, r.Peer.Addr() != out.Uplink, "want the host's uplink address %s", out.Uplink))
	log.OK("a capture on eth0 shows the host's address as the source",
		check.Expect(nil, !onUplink.Saw(out.Uplink, out.Addr), "no packet %s -> %s on eth0", out.Uplink, out.Addr))
	log.OK("a capture on docker0 shows the container's",
		check.Expect(nil, !onBridge.Saw(ctrAddr, out.Addr), "no packet %s -> %s on docker0", ctrAddr, out.Addr))

	// docker network create --internal backend: no egress at all.
	backend, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "backend", Internal: true})
	if !log.OK("docker network create --internal backend", err) {
		return err
	}
	defer backend.Delete(ctx, true)
	cfg := backend.Config()
	err = nat.Masquerade(ctx, host, nat.Network{Bridge: cfg.Bridge, Subnets: []netip.Prefix{cfg.Subnets[0].Subnet}, Internal: true})
	log.OK("masquerading an internal network is refused", check.Expect(nil, !errors.Is(err, nat.ErrInternal), "got %v", err))
	inner, err := env.Container()
	if err != nil {
		return err
	}
	if _, err := backend.Attach(ctx, bridge.EndpointConfig{ID: "db", NS: inner, DefaultRoute: true}); err != nil {
		return err
	}
	_, err = nstest.Exchange(ctx, inner, "tcp", srv.Addr.String(), "GET /")
	log.Refused("a container of the internal network reaches the outside", err)

	// Without its masquerade, c1's packets leave with 172.17.0.2, and the
	// outside has no route back.
	if err := nat.Remove(ctx, host, "docker0"); !log.OK("the masquerade of docker0 removed", err) {
		return err
	}
	_, err = nstest.Exchange(ctx, ctr, "tcp", srv.Addr.String(), "GET /")
	log.Refused("c1 reaches the outside without masquerade", err)
	return nil
}
