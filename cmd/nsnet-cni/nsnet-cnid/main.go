//go:build linux

// Command nsnet-cnid is the node daemon of the nsnet-cni plugin: one per
// node (per state directory), started by the plugin at its first call, in
// the node's network namespace. It does the work of every CNI call with
// nsnet's libraries and keeps what must outlive a call: port
// reservations, the DNS server, the overlays' control plane. See the
// nsnet-cni command's documentation.
//
//	nsnet-cnid -state-dir /var/lib/nsnet-cni
package main

import (
	"os"

	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/node"
)

func main() { os.Exit(node.Main(os.Args[1:])) }
