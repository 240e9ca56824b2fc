//go:build linux

// Package nlerr normalises the errors of the kernel and of the netlink
// libraries so that callers can match them with errors.Is against the os
// sentinels, and retries netlink dumps that the kernel interrupted.
//
// It is the one place in nsnet that knows these mappings; the exported
// error types of nsnet (netns.OpError) delegate their Is method here.
package nlerr

import (
	"errors"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Is reports whether err should match target beyond what the standard
// library already maps (unix.Errno maps ENOENT, EEXIST, EPERM, EACCES,
// ENOSYS and EOPNOTSUPP itself). It adds:
//
//   - os.ErrNotExist for ENODEV, ESRCH, ENXIO, EADDRNOTAVAIL and the
//     "not found" types of vishvananda/netlink (LinkNotFoundError);
//   - errors.ErrUnsupported for EAFNOSUPPORT and EPROTONOSUPPORT, which the
//     kernel returns when a link kind or protocol family is not built in.
func Is(err, target error) bool {
	switch target {
	case os.ErrNotExist:
		var lnf netlink.LinkNotFoundError
		if errors.As(err, &lnf) {
			return true
		}
		return errnoIn(err, unix.ENODEV, unix.ESRCH, unix.ENXIO, unix.EADDRNOTAVAIL)
	case errors.ErrUnsupported:
		return errnoIn(err, unix.EAFNOSUPPORT, unix.EPROTONOSUPPORT)
	}
	return false
}

// NotExist reports whether err says the object is not there: it matches
// os.ErrNotExist, or carries an errno or netlink type that Is maps to it.
// Removal code uses it to treat "already gone" as success.
func NotExist(err error) bool {
	return err != nil && (errors.Is(err, os.ErrNotExist) || Is(err, os.ErrNotExist))
}

func errnoIn(err error, errnos ...unix.Errno) bool {
	var e unix.Errno
	if !errors.As(err, &e) {
		return false
	}
	for _, n := range errnos {
		if e == n {
			return true
		}
	}
	return false
}

// MaxDumpRetries is how often Retry repeats a dump that the kernel
// interrupted before it gives up.
const MaxDumpRetries = 10

// Retry calls dump until it returns without netlink.ErrDumpInterrupted
// (NLM_F_DUMP_INTR: the list changed while the kernel was sending it), at most
// MaxDumpRetries times, so that no caller acts on a half list. The last
// interrupted result is never returned: after the retries it fails with an
// error wrapping netlink.ErrDumpInterrupted.
func Retry[T any](dump func() (T, error)) (T, error) {
	var zero T
	var err error
	for range MaxDumpRetries {
		var v T
		v, err = dump()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return zero, err
		}
	}
	return zero, err
}
