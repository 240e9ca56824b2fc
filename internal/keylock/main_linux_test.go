package keylock

import (
	"os"
	"testing"
)

// TestMain keeps the tests' lock files in a directory of the run's own, not
// in the machine's /run/nsnet/locks.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keylock-test-")
	if err == nil {
		os.Setenv(DirEnv, dir)
	}
	code := m.Run()
	if err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}
