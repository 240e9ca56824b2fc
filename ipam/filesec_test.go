package ipam

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The file store's directory and files: no symbolic link planted in the
// directory is followed, and nobody else may read or plant files there.

// victim returns a file outside the store's directory that a planted link
// points at, and a check that it is untouched.
func victim(t *testing.T) (string, func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "victim")
	const content = "precious, not the store's\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, func() {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("the victim %s was changed: %q, %v", path, got, err)
		}
	}
}

// TestFileStore_plantedTempLink: symbolic links planted at the temporary
// names of the snapshot and the log (where a write creates its new file)
// are removed, not written through; the store writes its own files.
func TestFileStore_plantedTempLink(t *testing.T) {
	dir := t.TempDir()
	target, untouched := victim(t)
	defer untouched()
	for _, name := range []string{stateFile + tmpSuffix, logFile + tmpSuffix} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	s := openFile(t, dir)
	putN(t, s, 3, "v") // the first write creates the files
	// A compaction writes both again, through the temporary names.
	big := make([]byte, int(compactAt))
	if _, err := s.CAS(t.Context(), Op{Key: "big", Value: big}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateFile + tmpSuffix, logFile + tmpSuffix} {
		os.Symlink(target, filepath.Join(dir, name))
	}
	putN(t, s, 3, "w")
	if _, err := s.CAS(t.Context(), Op{Key: "big", Rev: mustGet(t, s, "big").Rev, Value: big[1:]}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateFile, logFile} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want a regular file, mode 0600", name, fi.Mode(), err)
		}
	}
	if got := string(mustGet(t, openFile(t, dir), "k2").Value); got != "w" {
		t.Errorf("k2 = %q after reopening", got)
	}
}

// TestFileStore_plantedLink: a symbolic link planted as the lock file, the
// snapshot or the log is refused (ELOOP), not followed: not read as the
// store's state, nor locked, nor written.
func TestFileStore_plantedLink(t *testing.T) {
	for _, name := range []string{lockFile, stateFile, logFile} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target, untouched := victim(t)
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			s, err := OpenFileStore(dir)
			if err == nil {
				_, err = s.CAS(t.Context(), Op{Key: "k", Value: []byte("v")})
				s.Close()
			}
			if !errors.Is(err, syscall.ELOOP) {
				t.Errorf("a store with %s linked to another file: err = %v, want ELOOP", name, err)
			}
			untouched()
			if fi, err := os.Stat(target); err == nil && fi.Mode().Perm() != 0o644 {
				t.Errorf("the victim's mode was changed to %v", fi.Mode())
			}
		})
	}
}

// TestFileStore_modes: an existing directory with a looser mode is set to
// 0700, and an existing lock file to 0600.
func TestFileStore_modes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if err := os.WriteFile(filepath.Join(dir, lockFile), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, lockFile), 0o666)
	s := openFile(t, dir)
	putN(t, s, 2, "v")
	if _, err := s.CAS(t.Context(), Op{Key: "big", Value: make([]byte, int(compactAt))}); err != nil {
		t.Fatal(err) // a snapshot too
	}
	for name, want := range map[string]os.FileMode{"": 0o700, lockFile: 0o600, stateFile: 0o600, logFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%q: %v", name, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%q: mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
}

// TestFileStore_relativeDir: a relative directory is a *ValidationError,
// and nothing is created.
func TestFileStore_relativeDir(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, dir := range []string{"state", "./state", "../state"} {
		_, err := OpenFileStore(dir)
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("OpenFileStore(%q): err = %v, want *ValidationError", dir, err)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("OpenFileStore(%q) created it", dir)
		}
	}
}
