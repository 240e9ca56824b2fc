package ipam

import (
	"fmt"
	"os"

	"github.com/nsnet/nsnet"
)

// Sentinel errors. Test for them with errors.Is; the errors ipam returns wrap
// them with the pool, owner or address concerned. ErrNotFound also matches
// os.ErrNotExist and ErrExists os.ErrExist.
var (
	// ErrNotFound: the pool (or, from a Store, the key) does not exist.
	ErrNotFound error = &sentinel{"not found", os.ErrNotExist}
	// ErrExists: a pool of that name exists with other settings, or the
	// owner already holds another address than the static one asked for.
	ErrExists error = &sentinel{"already exists", os.ErrExist}
	// ErrInUse: the pool still has allocations, so it cannot be deleted. It
	// matches nsnet.ErrInUse.
	ErrInUse error = &sentinel{"in use", nsnet.ErrInUse}
	// ErrAddrInUse: the static address asked for belongs to another owner.
	ErrAddrInUse error = &sentinel{"address in use", nil}
	// ErrExhausted: no free address is left in the pool (for the family
	// asked for), or no free subnet is left in the default pools.
	ErrExhausted error = &sentinel{"no free address", nil}
	// ErrOverlap: a subnet overlaps another subnet of the same or of another
	// pool. It comes wrapped in a *ValidationError.
	ErrOverlap error = &sentinel{"overlapping subnets", nil}
	// ErrConflict: a Store's CAS found a key at another revision than the
	// one given. Allocator retries on it; callers of a Store see it.
	ErrConflict error = &sentinel{"revision conflict", nil}
	// ErrCompacted: a Store's Watch asked for revisions the store no longer
	// has. It comes as a *CompactedError; re-list and watch from the
	// revision List returned.
	ErrCompacted error = &sentinel{"revision compacted", nil}
	// ErrClosed: the Store was closed (or its etcd client was), so it can
	// no longer be read, written or watched.
	ErrClosed error = &sentinel{"store closed", nil}
)

type sentinel struct {
	msg string
	is  error // an os sentinel it also matches, or nil
}

func (e *sentinel) Error() string { return "ipam: " + e.msg }

func (e *sentinel) Is(target error) bool { return e.is != nil && target == e.is }

// ValidationError reports bad input, found before any state was written:
//
//	ipam: PoolConfig.Subnets[0].Gateway "10.1.0.0": the network address of 10.1.0.0/16
//
// Err, when set, is a sentinel the error also matches (ErrOverlap). It is
// nsnet.ValidationError, the one type every nsnet package returns for bad
// input.
type ValidationError = nsnet.ValidationError

func invalid(field string, value any, format string, args ...any) *ValidationError {
	return &ValidationError{Pkg: "ipam", Field: field, Value: fmt.Sprint(value), Reason: fmt.Sprintf(format, args...)}
}

// CorruptError reports stored state that cannot be read: a state file of the
// file store that is truncated or fails its checksum, or a value under an
// ipam key that does not decode. ipam never resets such state by itself: move
// the file away (or delete the key) to start over, or restore a backup.
type CorruptError struct {
	File string // the state file, for the file store
	Key  string // the key whose value does not decode, if that is what failed
	Err  error  // what is wrong
}

func (e *CorruptError) Error() string {
	switch {
	case e.File != "" && e.Key != "":
		return fmt.Sprintf("ipam: corrupt state file %s: key %s: %v", e.File, e.Key, e.Err)
	case e.File != "":
		return fmt.Sprintf("ipam: corrupt state file %s: %v", e.File, e.Err)
	default:
		return fmt.Sprintf("ipam: corrupt value of key %s: %v", e.Key, e.Err)
	}
}

func (e *CorruptError) Unwrap() error { return e.Err }

// CompactedError is the error a Watch ends with when the revision it was to
// start after is older than the store keeps (etcd compacted it, or the event
// history of a memory or file store no longer reaches back that far). It
// matches ErrCompacted. The caller re-lists (List) and watches again from the
// revision List returned.
type CompactedError struct {
	Rev int64 // the oldest revision the store still has, if known
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("ipam: watch: revision compacted (oldest kept: %d): re-list and watch again", e.Rev)
}

func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }
