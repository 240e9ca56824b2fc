//go:build !linux

// Command nsnet-cni is a CNI plugin for Linux; elsewhere it only says so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "nsnet-cni: a CNI plugin for Linux only")
	os.Exit(1)
}
