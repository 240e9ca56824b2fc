//go:build unix

package ipam

import (
	"os"
	"syscall"
)

// flock takes (exclusive) or drops the lock on f, like flock(1).
func flock(f *os.File, exclusive bool) error {
	how := syscall.LOCK_UN
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}
