//go:build !linux

// Command nsnet-cnid is the node daemon of the nsnet-cni plugin, for Linux
// only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "nsnet-cnid: Linux only")
	os.Exit(1)
}
