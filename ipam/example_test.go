package ipam_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/nsnet/nsnet/ipam"
)

// Docker's default bridge, a network with an auto-selected subnet,
// and one with a gateway at .254, an ip-range and a static address.
func Example() {
	ctx := context.Background()
	a, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		log.Fatal(err)
	}
	a.CreatePool(ctx, ipam.PoolConfig{Name: "bridge", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.17.0.0/16")}}})
	mynet, _ := a.CreatePool(ctx, ipam.PoolConfig{Name: "mynet"})
	fmt.Println("mynet:", mynet.Subnets[0].Subnet, "gateway", mynet.Subnets[0].Gateway)

	a.CreatePool(ctx, ipam.PoolConfig{Name: "net21", Subnets: []ipam.SubnetConfig{{
		Subnet:  netip.MustParsePrefix("172.21.0.0/16"),
		Gateway: netip.MustParseAddr("172.21.0.254"),
		IPRange: netip.MustParsePrefix("172.21.100.0/24"),
	}}})
	c1, _ := a.Allocate(ctx, "net21", "c1/eth0")
	fmt.Println("c1:", c1.IPv4.Addr, "via", c1.IPv4.Gateway)
	c2, _ := a.Allocate(ctx, "net21", "c2/eth0", netip.MustParseAddr("172.21.0.10"))
	fmt.Println("c2:", c2.IPv4.Addr, "static", c2.IPv4.Static)
	_, err = a.Allocate(ctx, "net21", "c3/eth0", netip.MustParseAddr("172.21.0.10"))
	fmt.Println("c3:", err)
	// Output:
	// mynet: 172.18.0.0/16 gateway 172.18.0.1
	// c1: 172.21.100.0/16 via 172.21.0.254
	// c2: 172.21.0.10/16 static true
	// c3: ipam: allocate 172.21.0.10 in pool net21 for c3/eth0: held by c2/eth0: address in use
}

// The file store: what one process allocated, the next one finds.
func ExampleOpenFileStore() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "ipam-example")
	defer os.RemoveAll(dir)

	st, err := ipam.OpenFileStore(dir) // "" is /var/lib/nsnet
	if err != nil {
		log.Fatal(err) // a damaged state is a *ipam.CorruptError naming the file
	}
	a, _ := ipam.New(st, ipam.Config{})
	a.CreatePool(ctx, ipam.PoolConfig{Name: "n", Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.88.0.0/16")}}})
	al, _ := a.Allocate(ctx, "n", "ctr1/eth0")
	st.Close()

	// A restarted process.
	st, _ = ipam.OpenFileStore(dir)
	defer st.Close()
	b, _ := ipam.New(st, ipam.Config{})
	again, _ := b.Allocate(ctx, "n", "ctr1/eth0") // the same owner: the same address
	fmt.Println(al.IPv4.Addr, again.IPv4.Addr)
	// Output: 10.88.0.2/16 10.88.0.2/16
}
