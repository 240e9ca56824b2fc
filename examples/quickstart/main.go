// Command quickstart is the shortest tour of nsnet: inside a sandbox host
// namespace it makes a container namespace, wires it to the host with a
// veth pair (the container's end created in place as eth0), gives both ends
// addresses and checks that ICMP and TCP pass both ways.
//
//	sudo go run ./examples/quickstart
//
// It prints each check and exits non-zero if one fails; it leaves nothing
// behind, and never touches the machine's own network namespace.
package main

import (
	"context"
	"net/netip"

	"github.com/nsnet/nsnet/examples/internal/check"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/veth"
)

func main() { check.Main(run) }

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host

	// A container is a network namespace; nsnet acts in it through a handle.
	ctr, err := netns.New()
	if err != nil {
		return err
	}
	defer ctr.Close()
	if err := ctr.LoopbackUp(); err != nil {
		return err
	}

	// ip link add vethXXXXXXX type veth peer name eth0 netns CTR
	pair, err := veth.Pair(ctx, host, veth.Config{
		Peer: veth.End{NS: ctr, Name: "eth0"},
		Up:   true,
	})
	if !log.OK("veth pair "+pair.Host.Name+" (host) / eth0 (container)", err) {
		return err
	}
	defer veth.Delete(ctx, host, pair.Host.Name)
	if err := check.AddAddr(pair.Host, "10.88.0.1/24"); err != nil {
		return err
	}
	if err := check.AddAddr(pair.Peer, "10.88.0.2/24"); err != nil {
		return err
	}
	log.Printf("host %s 10.88.0.1/24, container eth0 %s 10.88.0.2/24", pair.Host.Name, pair.Peer.MAC)

	log.OK("ping the container from the host", nstest.Ping(ctx, host, netip.MustParseAddr("10.88.0.2")))
	log.OK("ping the host from the container", nstest.Ping(ctx, ctr, netip.MustParseAddr("10.88.0.1")))
	log.OK("TCP from the host to a server in the container", check.Exchange(ctx, host, ctr, "10.88.0.2:8080", "10.88.0.1"))
	log.OK("TCP from the container to a server on the host", check.Exchange(ctx, ctr, host, "10.88.0.1:8080", "10.88.0.2"))

	log.OK("delete the pair", veth.Delete(ctx, host, pair.Host.Name))
	links, err := ctr.Links()
	log.OK("the container is back to lo only", check.Expect(err, len(links) != 1, "%d links", len(links)))
	return nil
}
