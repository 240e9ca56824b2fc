package netns

import (
	"errors"
	"os"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/nlerr"
)

// Sentinel errors. ErrNotFound and ErrExists are the os sentinels, so a caller
// can test errors from nsnet and from the os package alike:
// errors.Is(err, netns.ErrNotFound) is errors.Is(err, os.ErrNotExist).
var (
	// ErrNotFound: the namespace, link or other object does not exist.
	// Errors carrying ENOENT, ENODEV, ESRCH or netlink's "not found" types
	// match it.
	ErrNotFound = os.ErrNotExist
	// ErrExists: an object with that name already exists.
	ErrExists = os.ErrExist
	// ErrInUse: the object still has users; it is nsnet.ErrInUse.
	ErrInUse = nsnet.ErrInUse
	// ErrClosed: the NS was closed.
	ErrClosed = errors.New("netns: namespace handle closed")
)

// OpError is the error type of every kernel operation in nsnet. It says which
// operation failed, in which namespace, on which object, and wraps the cause
// (a unix.Errno, a netlink error or a sentinel), which stays reachable with
// errors.Is and errors.As.
//
// Besides what the cause matches itself, an OpError matches os.ErrNotExist
// for ENODEV, ESRCH, ENXIO and netlink's LinkNotFoundError, and
// errors.ErrUnsupported for EAFNOSUPPORT and EPROTONOSUPPORT.
type OpError struct {
	Op   string // "netns.open", "veth.create", ...
	NS   string // the namespace: "net:[4026532281]" or a path; may be empty
	Name string // the object's name, if any
	Err  error
}

func (e *OpError) Error() string {
	s := e.Op
	if e.Name != "" {
		s += " " + e.Name
	}
	if e.NS != "" {
		s += " in " + e.NS
	}
	return s + ": " + e.Err.Error()
}

func (e *OpError) Unwrap() error { return e.Err }

// Is reports the mappings of errnos to os sentinels that unix.Errno does not
// make itself.
func (e *OpError) Is(target error) bool { return nlerr.Is(e.Err, target) }

// ValidationError is bad input, refused before the kernel was touched:
// nsnet.ValidationError, the one type every nsnet package returns for it.
type ValidationError = nsnet.ValidationError
