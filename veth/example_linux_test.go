package veth_test

import (
	"context"
	"fmt"
	"log"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/veth"
)

// `ip link add veth-c1 type veth peer name eth0 netns c1`: the container's
// end is made in its namespace, so it never appears in the host's.
func ExamplePair() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()

	ends, err := veth.Pair(ctx, host, veth.Config{
		Name: "veth-c1",
		Peer: veth.End{NS: ctr, Name: "eth0"},
		MTU:  1450,
		Up:   true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ends.Host.Name, "<->", ends.Peer.Name, ends.Peer.NS.Equal(ctr))

	// Deleting either end deletes both.
	if err := veth.Delete(ctx, host, "veth-c1"); err != nil {
		log.Fatal(err)
	}
	links, _ := ctr.Links()
	fmt.Println(len(links), "link left in the container:", links[0].Attrs().Name)
	// Output:
	// veth-c1 <-> eth0 true
	// 1 link left in the container: lo
}
