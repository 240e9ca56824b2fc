package netns_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/nsnet/nsnet/netns"
)

// A namespace of its own, loopback up, and a TCP exchange inside it: the
// sockets are made in the namespace, whatever goroutine uses them.
func Example() {
	ns, err := netns.New() // anonymous: gone with its last handle
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Close()
	if err := ns.LoopbackUp(); err != nil {
		log.Fatal(err)
	}
	ln, err := ns.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello from inside"))
			c.Close()
		}
	}()
	c, err := ns.Dial(context.Background(), &net.Dialer{}, "tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	links, _ := ns.Links()
	fmt.Println(string(buf[:n]), len(links), links[0].Attrs().Name)
	// Output: hello from inside 1 lo
}
