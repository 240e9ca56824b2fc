//go:build !linux

package nlerr

import (
	"errors"
	"os"
)

// Is maps nothing beyond the standard library's own mappings off Linux:
// there are no netlink errors to normalise.
func Is(err, target error) bool { return false }

// NotExist reports whether err matches os.ErrNotExist.
func NotExist(err error) bool { return err != nil && errors.Is(err, os.ErrNotExist) }
