//go:build linux

// Package examples_test builds every example program and runs it as a user
// would (sudo go run ./examples/NAME), as a separate process: it must exit
// 0, print no failed check, and leave nothing behind.
package examples_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
)

func TestExamples(t *testing.T) {
	nstest.Require(t)
	mains, err := filepath.Glob("*/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if len(mains) < 2 {
		t.Fatalf("found %d examples", len(mains))
	}
	bin := t.TempDir()
	for _, m := range mains {
		name := filepath.Dir(m)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			nstest.Machine(t)
			dir := nstest.Dir(t)
			exe := filepath.Join(bin, name)
			build := exec.Command("go", "build", "-o", exe, "./"+name)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build ./examples/%s: %v\n%s", name, err, out)
			}
			cmd := exec.CommandContext(t.Context(), exe, "-netns-dir", string(dir))
			cmd.Env = os.Environ()
			out, err := cmd.CombinedOutput()
			t.Logf("%s:\n%s", name, out)
			if err != nil {
				t.Fatalf("examples/%s: %v", name, err)
			}
			if strings.Contains(string(out), "FAIL") || !strings.Contains(string(out), "ok ") {
				t.Fatalf("examples/%s: a check failed, or none ran", name)
			}
		})
	}
}
