//go:build !unix

package ipam

import (
	"errors"
	"os"
)

const (
	lockEx = iota
	lockSh
	lockUn
)

func flock(f *os.File, how int) error { return errors.ErrUnsupported }
