//go:build !unix

package ipam

import (
	"errors"
	"os"
)

func flock(f *os.File, exclusive bool) error { return errors.ErrUnsupported }
