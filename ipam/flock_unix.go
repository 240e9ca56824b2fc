//go:build unix

package ipam

import (
	"os"
	"syscall"
)

// How flock locks.
const (
	lockEx = syscall.LOCK_EX
	lockSh = syscall.LOCK_SH
	lockUn = syscall.LOCK_UN
)

// flock takes (lockEx, lockSh) or drops (lockUn) the lock on f, like flock(1).
func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}
