//go:build unix

package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// openDir opens the store's directory, which must be a directory owned by
// the effective user, and sets its mode to 0700 if it was looser.
func openDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = private(f, fi, 0o700)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openPrivate opens one of the store's files without following a symbolic
// link (one planted there is an error, ELOOP). The file must be a regular
// file owned by the effective user; a looser mode than 0600 is tightened.
func openPrivate(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	default:
		err = private(f, fi, 0o600)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// private checks that the open file f is owned by the effective user and
// clears the bits of its mode beyond perm.
func private(f *os.File, fi os.FileInfo, perm fs.FileMode) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: owned by uid %d, not by this process's %d: %w", f.Name(), st.Uid, os.Geteuid(), fs.ErrPermission)
	}
	if fi.Mode().Perm()&^perm != 0 {
		return f.Chmod(fi.Mode().Perm() & perm)
	}
	return nil
}

// createExcl creates a new file at path, mode 0600, never through a
// symbolic link: O_EXCL fails on anything already there, link or file. Such
// a leftover (a crash, or planted) is removed, the link and not its target,
// and the create tried once more.
func createExcl(path string) (*os.File, error) {
	for try := 0; ; try++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err == nil || try > 0 || !errors.Is(err, fs.ErrExist) {
			return f, err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
}
