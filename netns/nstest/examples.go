//go:build linux

package nstest

import (
	"flag"
	"fmt"
	"os"
)

// skipExamples keeps a package's runnable Examples from running where they
// cannot: they make namespaces, links and rules, so they need root like the
// tests, and, unlike a test, an Example cannot skip itself. Without the
// privileges (and outside CI, where that is a failure) it adds "^Example" to
// -test.skip and says so.
func skipExamples() {
	if os.Getenv("CI") == "true" || probe() == nil {
		return
	}
	if !flag.Parsed() {
		flag.Parse() // as m.Run would, so that a -test.skip given is kept
	}
	f := flag.Lookup("test.skip")
	if f == nil {
		return
	}
	skip := "^Example"
	if f.Value.String() != "" {
		skip = f.Value.String() + "|" + skip
	}
	if flag.Set("test.skip", skip) == nil {
		fmt.Fprintln(os.Stderr, "nstest: cannot create network namespaces (run as root: sudo go test ./...): skipping the Examples")
	}
}
