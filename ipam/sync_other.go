//go:build !linux

package ipam

import "os"

func fdatasync(f *os.File) error { return f.Sync() }
