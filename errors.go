package nsnet

import (
	"errors"
	"fmt"
)

// ValidationError is bad input, refused before anything was touched (no
// kernel request, no store write, no socket). Every nsnet package returns
// this one type for its own input, under its own name (bridge.ValidationError,
// ipam.ValidationError, ... are this type), so one errors.As finds it
// whichever package the error came from:
//
//	var ve *nsnet.ValidationError
//	if errors.As(err, &ve) { ... ve.Field, ve.Value, ve.Reason ... }
//
// Its message names the package, the field and the value:
//
//	veth: Config.Peer.Name "container-eth0-x": longer than 15 bytes
type ValidationError struct {
	Pkg    string // the package that refused it: "veth", "ipam", ...
	Field  string // "Config.Peer.Name", "owner", "host"
	Value  string // the offending value as given
	Reason string // what is wrong with it
	// Err, when set, is a sentinel the error also matches (ipam.ErrOverlap).
	Err error
}

func (e *ValidationError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s: %s", e.Pkg, e.Field, e.Reason)
	}
	return fmt.Sprintf("%s: %s %q: %s", e.Pkg, e.Field, e.Value, e.Reason)
}

func (e *ValidationError) Unwrap() error { return e.Err }

// ErrInUse is what every package's ErrInUse matches with errors.Is: the
// object still has users (a network its endpoints, a pool its allocations),
// so it was not removed. Each package's ErrNotFound matches os.ErrNotExist
// and its ErrExists os.ErrExist in the same way.
var ErrInUse = errors.New("in use")
