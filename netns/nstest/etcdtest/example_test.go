//go:build linux

package etcdtest_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
)

// A program that is not a test (an example, a demo) launches the fixture's
// server with Launch and closes it; a test uses Start(t), which closes it
// at cleanup.
func ExampleLaunch() {
	dir, err := os.MkdirTemp("", "etcdtest-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := etcdtest.Launch(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Put(ctx, "greeting", "hello from etcd"); err != nil {
		log.Fatal(err)
	}
	resp, err := c.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(resp.Kvs[0].Value))
	// Output: hello from etcd
}
