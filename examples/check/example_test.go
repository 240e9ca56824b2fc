//go:build linux

package check_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/nsnet/nsnet/examples/check"
)

// How an example program reports: each check on a line, and an error at the
// end if any failed, so that the program exits non-zero.
func ExampleLog() {
	log := check.NewLog(os.Stdout)
	log.OK("web pings db", nil)
	log.Refused("an internal network reaches the outside", errors.New("no route to host"))
	log.OK("db resolves web", check.Expect(nil, true, "no answer"))
	fmt.Println(log.Err() != nil)
	// Output:
	// ok   web pings db
	// ok   an internal network reaches the outside (refused: no route to host)
	// FAIL db resolves web: no answer
	// true
}
