package stack_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
	"github.com/nsnet/nsnet/stack"
)

// A runtime's `docker network create app`, `docker run --network app
// --network-alias www -p 8080:80 web`, `docker stop web` and `docker
// network rm app`, on a host that is a namespace of its own.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	dir, err := os.MkdirTemp("", "stack-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := stack.Open(ctx, host, stack.Config{StateDir: dir, Upstreams: []netip.AddrPort{}})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	nw, err := s.CreateNetwork(ctx, stack.NetworkConfig{Name: "app"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("app:", nw.Subnets[0].Subnet, "gateway", nw.Subnets[0].Gateway)

	ctr, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer ctr.Close()
	c, err := s.Run(ctx, stack.ContainerConfig{
		ID:       "web",
		NS:       ctr,
		Networks: []stack.Attachment{{Network: "app", Aliases: []string{"www"}}},
		Ports:    []portmap.Mapping{{HostPort: 8080, CtrPort: 80}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("web:", c.Endpoints[0].IfName, c.Endpoints[0].Addrs, "nameserver", c.Nameservers)
	fmt.Println("published:", c.Ports[0])

	fmt.Println(s.Stop(ctx, "web"), s.DeleteNetwork(ctx, "app"))
	// Output:
	// app: 172.17.0.0/16 gateway 172.17.0.1
	// web: eth0 [172.17.0.2/16] nameserver [172.17.0.1]
	// published: tcp *:8080 -> 172.17.0.2:80 (web)
	// <nil> <nil>
}
