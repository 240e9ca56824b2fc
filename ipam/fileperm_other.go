//go:build !unix

package ipam

import "os"

func openDir(dir string) (*os.File, error) { return os.Open(dir) }

func openPrivate(path string, flag int) (*os.File, error) { return os.OpenFile(path, flag, 0o600) }

func createExcl(path string) (*os.File, error) {
	for try := 0; ; try++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil || try > 0 || !os.IsExist(err) {
			return f, err
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
}
