//go:build linux

// Command network-modes reproduces the network modes of
// `docker run --network`: none (lo only), host (the host's own stack) and
// container:NAME (a second container in the first one's namespace).
//
//	go run ./examples/network-modes    # as root
package main

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

func main() { check.Main(run) }

func linkNames(ns *netns.NS) []string {
	links, _ := ns.Links()
	var out []string
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	net0, err := bridge.New(ctx, host, env.Alloc, bridge.Config{Name: "bridge", Bridge: "docker0"})
	if err != nil {
		return err
	}
	defer net0.Delete(ctx, true)

	// --network none
	none, err := env.Container()
	if err != nil {
		return err
	}
	log.OK("--network none: lo up", bridge.None(ctx, none))
	log.OK("--network none: the container has only lo", check.Expect(nil, !slices.Equal(linkNames(none), []string{"lo"}), "%v", linkNames(none)))
	log.OK("--network none: 127.0.0.1 answers", nstest.Ping(ctx, none, netip.MustParseAddr("127.0.0.1")))

	// --network host
	hostMode, err := bridge.HostMode(host)
	if err != nil {
		return err
	}
	defer hostMode.Close()
	log.OK("--network host: the container's namespace is the host's", check.Expect(nil, !hostMode.Equal(host), "not equal"))
	log.OK("--network host: same interfaces as the host", check.Expect(nil, !slices.Equal(linkNames(hostMode), linkNames(host)), "%v vs %v", linkNames(hostMode), linkNames(host)))
	_, err = net0.Attach(ctx, bridge.EndpointConfig{ID: "hostmode", NS: hostMode})
	log.OK("--network host: attaching to a network is refused ("+errString(err)+")", check.Expect(nil, !errors.Is(err, bridge.ErrHostMode), "got %v", err))
	l, err := host.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		return err
	}
	_, err = hostMode.Listen("tcp", "127.0.0.1:8080")
	log.Refused("--network host: the container binds a port the host uses", err)
	l.Close()

	// --network container:owner
	owner, err := env.Container()
	if err != nil {
		return err
	}
	ep, err := net0.Attach(ctx, bridge.EndpointConfig{ID: "owner", NS: owner, DefaultRoute: true})
	if !log.OK("the owner container on docker0: "+ep.IfName+" "+ep.Addrs[0].String(), err) {
		return err
	}
	joiner, err := bridge.Join(owner)
	if err != nil {
		return err
	}
	defer joiner.Close()
	log.OK("--network container:owner: the joiner sees the owner's interfaces", check.Expect(nil, !slices.Equal(linkNames(joiner), linkNames(owner)), "%v", linkNames(joiner)))
	log.OK("--network container:owner: they talk over 127.0.0.1", check.Exchange(ctx, joiner, owner, "127.0.0.1:9000", "127.0.0.1"))
	l, err = owner.Listen("tcp", "127.0.0.1:9001")
	if err != nil {
		return err
	}
	_, err = joiner.Listen("tcp", "127.0.0.1:9001")
	log.Refused("--network container:owner: the joiner binds a port the owner uses", err)
	l.Close()
	if err := net0.Detach(ctx, "owner"); err != nil {
		return err
	}
	log.OK("when the owner's endpoint goes, the joiner has lo only", check.Expect(nil, !slices.Equal(linkNames(joiner), []string{"lo"}), "%v", linkNames(joiner)))
	return net0.Delete(ctx, false)
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
