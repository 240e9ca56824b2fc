package netns

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCheckName: a name checkName accepts is exactly one element of a path,
// so Dir.New and Dir.Delete can never reach outside their directory.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"test1", "", ".", "..", "a/b", "../x", "x/..", "nul\x00", strings.Repeat("n", 256), "ok.name", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := checkName(name)
		const dir = "/run/nsnet-fuzz"
		p := filepath.Join(dir, name)
		safe := name != "" && len(name) <= 255 && !strings.ContainsRune(name, 0) &&
			filepath.Dir(p) == dir && filepath.Base(p) == name
		if (err == nil) != safe {
			t.Fatalf("checkName(%q) = %v, but as a path element it is safe=%v (%q)", name, err, safe, p)
		}
	})
}
