// Package errs makes the sentinel errors of nsnet's packages: each has its
// package's own message and also matches, with errors.Is, the module-wide
// sentinel it is a case of (os.ErrNotExist, os.ErrExist, nsnet.ErrInUse).
package errs

import (
	"fmt"

	"github.com/nsnet/nsnet"
)

// New returns a sentinel with message msg that also matches also (nil:
// nothing else).
func New(msg string, also error) error { return &sentinel{msg, also} }

type sentinel struct {
	msg  string
	also error
}

func (e *sentinel) Error() string { return e.msg }

func (e *sentinel) Is(target error) bool { return e.also != nil && target == e.also }

// Invalid returns the *nsnet.ValidationError of package pkg for field and
// value (formatted with %v; a nil value is "<nil>").
func Invalid(pkg, field string, value any, reason string) *nsnet.ValidationError {
	v := "<nil>"
	if value != nil {
		v = fmt.Sprint(value)
	}
	return &nsnet.ValidationError{Pkg: pkg, Field: field, Value: v, Reason: reason}
}

// Wrap returns an error with the message format makes (naming the object,
// without the sentinel's words again) that matches sentinel with errors.Is.
func Wrap(sentinel error, format string, args ...any) error {
	return &wrapped{fmt.Sprintf(format, args...), sentinel}
}

type wrapped struct {
	msg string
	err error
}

func (e *wrapped) Error() string { return e.msg }

func (e *wrapped) Unwrap() error { return e.err }
