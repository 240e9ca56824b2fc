package etcdstore_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// Two hosts sharing a pool through etcd: each has its own client and its
// own allocator on the same keys, and no address is handed out twice. The
// etcd server here is the test fixture's (a real server in a namespace of
// its own); a cluster gives its own endpoints to clientv3.New.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "etcdstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := etcdtest.Launch(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	ctx := context.Background()
	var addrs []netip.Prefix
	for i, host := range []string{"host1", "host2"} {
		c, err := srv.NewClient() // clientv3.New(clientv3.Config{Endpoints: ...})
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		store, err := etcdstore.New(c, "/mynet/")
		if err != nil {
			log.Fatal(err)
		}
		a, err := ipam.New(store, ipam.Config{})
		if err != nil {
			log.Fatal(err)
		}
		if i == 0 {
			if _, err := a.CreatePool(ctx, ipam.PoolConfig{Name: "overlay0",
				Subnets: []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("10.88.0.0/24")}}}); err != nil {
				log.Fatal(err)
			}
		}
		al, err := a.Allocate(ctx, "overlay0", host+"/ctr1/eth0")
		if err != nil {
			log.Fatal(err)
		}
		addrs = append(addrs, al.IPv4.Addr)
	}
	fmt.Println(addrs)
	// Output: [10.88.0.2/24 10.88.0.3/24]
}
