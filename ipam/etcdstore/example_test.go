package etcdstore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Hosts sharing pools through etcd: each host's allocator works on the
// same keys, and no address is handed out twice.
func ExampleNew() {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}})
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
	al, err := a.Allocate(context.Background(), "overlay0", "host1/ctr1/eth0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(al.IPv4.Addr)
}
