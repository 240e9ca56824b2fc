// Command etcd runs a real etcd server for nsnet's tests. It is its own
// module so that the nsnet module never depends on the etcd server; the
// package internal/etcdtest builds and starts it.
//
// It takes etcd's own flags (see etcd --help), for example:
//
//	etcd --data-dir DIR --listen-client-urls http://127.0.0.1:2379 ...
package main

import (
	"os"

	etcdmain "go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
