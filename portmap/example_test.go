package portmap_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
)

// Publish a container's port 80 on port 8080 of every address of a host
// (`docker run -p 8080:80`), list it (`docker port`) and unpublish it. The
// host here is a new namespace, as in every test.
func Example() {
	ctx := context.Background()
	host, err := netns.New()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer host.Close()

	mp, err := portmap.New(host, portmap.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mp.Close()
	web := netip.MustParseAddr("172.17.0.2")
	m, err := mp.Add(ctx, portmap.Mapping{HostPort: 8080, CtrAddr: web, CtrPort: 80, ID: "web"})
	if err != nil {
		fmt.Println(err)
		return
	}
	// -P: an ephemeral host port, chosen and returned.
	eph, err := mp.Add(ctx, portmap.Mapping{Proto: "udp", CtrAddr: web, CtrPort: 53, ID: "web"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ephemeral:", eph.HostPort >= 32768 && eph.HostPort <= 60999)

	list, _ := mp.List(ctx)
	for _, m := range list {
		if m.HostPort == 8080 {
			fmt.Println(m)
		}
	}
	fmt.Println(mp.Remove(ctx, m), mp.Remove(ctx, eph))
	// Output:
	// ephemeral: true
	// tcp *:8080 -> 172.17.0.2:80 (web)
	// <nil> <nil>
}
