package netns_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

// mainThreadEnv makes the test binary run mainThreadChild instead of the
// tests (see TestMain).
const mainThreadEnv = "NSNET_TEST_DO_MAIN_THREAD"

func init() {
	if os.Getenv(mainThreadEnv) != "" {
		// Keep the main goroutine on the main thread until
		// mainThreadChild lets it go: the setup the child needs.
		runtime.LockOSThread()
	}
}

// mainThreadChild is the re-executed test binary: its main goroutine, on
// the main thread, calls Do with one processor, so that the scheduler
// starts Do's goroutine on the main thread as soon as the caller waits;
// the switch back is made to fail. It exits 0 if the main thread
// (/proc/PID/ns/net) is still in the process's namespace afterwards.
func mainThreadChild() int {
	if unix.Gettid() != unix.Getpid() {
		fmt.Println("main goroutine not on the main thread")
		return 2
	}
	ns, err := netns.New()
	if err != nil {
		fmt.Println(err)
		return 2
	}
	netns.FailSwitchBack(errors.New("injected: setns back refused"))
	runtime.GOMAXPROCS(1)
	runtime.UnlockOSThread()
	var ranOn int
	err = ns.Do(func() error { ranOn = unix.Gettid(); return nil })
	if err == nil {
		fmt.Println("Do did not report the failed switch back")
		return 1
	}
	var st, self unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), &st); err != nil {
		fmt.Println(err)
		return 2
	}
	cur, err := netns.Current()
	if err != nil {
		fmt.Println(err)
		return 2
	}
	if err := unix.Fstat(cur.Fd(), &self); err != nil {
		fmt.Println(err)
		return 2
	}
	if st.Ino != self.Ino {
		fmt.Printf("main thread left in %s (fn ran on thread %d, the main thread is %d), not the process's net:[%d]\n",
			netns.ID{Dev: st.Dev, Ino: st.Ino}, ranOn, os.Getpid(), self.Ino)
		return 1
	}
	if ranOn == os.Getpid() {
		fmt.Println("fn ran on the main thread")
		return 1
	}
	return 0
}

// TestDoNeverOnMainThread: a Do whose switch back fails never leaves the
// process's main thread in the foreign namespace, even when the scheduler
// starts Do's goroutine there (the runtime cannot retire the main thread:
// it would stay in the namespace for the life of the process).
func TestDoNeverOnMainThread(t *testing.T) {
	t.Parallel()
	nstest.Require(t)
	for i := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), mainThreadEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("round %d: %v: %s", i, err, out)
		}
	}
}
