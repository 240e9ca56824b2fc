package nsnet

import (
	"errors"
	"fmt"
	"strconv"
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

// ErrDrift is what every package's ErrDrift matches with errors.Is: a
// Check found a network or an endpoint different from what its settings
// say.
var ErrDrift = errors.New("drifted from its settings")

// A Drift is one difference a Check found: the kind of object (bridge,
// vxlan, pool, address, route, port, rule, up, interface, allocation,
// record, anchor, fdb, neighbour, filter, mark) and which one.
type Drift struct {
	Kind string
	What string // the object: an address, a route, an interface, a key
}

func (d Drift) String() string { return "missing " + d.Kind + " " + d.What }

// DriftError is the error of every package's Check and CheckEndpoint, as
// CNI CHECK has it: every drift found, none repaired (the idempotent New,
// Create or Attach repairs them). Each package names it as its own
// (bridge.DriftError, ...), so one errors.As finds it whichever package
// the error came from; it matches ErrDrift and its package's ErrDrift.
type DriftError struct {
	Pkg      string // the package that checked: "bridge", "macvlan", "overlay"
	Network  string
	Endpoint string // "" for the network itself
	Drifts   []Drift
	// Err is the package's ErrDrift.
	Err error
}

func (e *DriftError) Error() string {
	s := e.Pkg + ": network " + strconv.Quote(e.Network)
	if e.Endpoint != "" {
		s += " endpoint " + strconv.Quote(e.Endpoint)
	}
	s += ": drifted:"
	for i, d := range e.Drifts {
		if i > 0 {
			s += ","
		}
		s += " " + d.String()
	}
	return s
}

func (e *DriftError) Is(target error) bool { return target == ErrDrift }

func (e *DriftError) Unwrap() error { return e.Err }
