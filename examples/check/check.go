//go:build linux

// Package check is the harness the example programs run in: each runs inside
// a sandbox namespace that acts as its host, prints every check it makes and
// exits non-zero when one fails. It is public so that an example copied into
// another module builds as it is; it is not part of nsnet's stable API.
package check

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// Log prints checks as they are made and remembers failures.
type Log struct {
	w      io.Writer
	failed int
}

// NewLog returns a Log that prints to w.
func NewLog(w io.Writer) *Log { return &Log{w: w} }

// OK records a check that passes when err is nil.
func (l *Log) OK(what string, err error) bool {
	if err != nil {
		l.failed++
		fmt.Fprintf(l.w, "FAIL %s: %v\n", what, err)
		return false
	}
	fmt.Fprintf(l.w, "ok   %s\n", what)
	return true
}

// Refused records a check that passes when err is not nil: something that
// must not work (isolation, no route) did not.
func (l *Log) Refused(what string, err error) bool {
	if err == nil {
		l.failed++
		fmt.Fprintf(l.w, "FAIL %s: it worked, and must not\n", what)
		return false
	}
	fmt.Fprintf(l.w, "ok   %s (refused: %v)\n", what, err)
	return true
}

// Printf prints a line of information.
func (l *Log) Printf(format string, args ...any) { fmt.Fprintf(l.w, "     "+format+"\n", args...) }

// Err returns an error if any check failed.
func (l *Log) Err() error {
	if l.failed > 0 {
		return fmt.Errorf("%d checks failed", l.failed)
	}
	return nil
}

// Env is what an example runs with.
type Env struct {
	// Host is the sandbox namespace that acts as the example's host.
	Host *netns.NS
	// Dir is where the example keeps its named namespaces.
	Dir netns.Dir
	// Alloc is the example's address manager: an ipam.Allocator on a
	// memory store (a real program would use ipam.OpenFileStore).
	Alloc *ipam.Allocator
	// Log prints the checks.
	Log *Log

	closers *[]func()
}

// Container returns a new namespace for a container, lo up, closed when
// the example ends.
func (e Env) Container() (*netns.NS, error) {
	ns, err := netns.New()
	if err != nil {
		return nil, err
	}
	*e.closers = append(*e.closers, func() { ns.Close() })
	if err := ns.LoopbackUp(); err != nil {
		return nil, err
	}
	return ns, nil
}

func (e Env) close() {
	for i := len(*e.closers) - 1; i >= 0; i-- {
		(*e.closers)[i]()
	}
}

// Main runs an example program: it makes a sandbox host namespace (lo up),
// runs run in it, removes the sandbox and exits with status 1 if run failed
// or any check did. The flag -netns-dir sets where named namespaces go
// (default /var/run/netns, where `ip netns list` shows them).
func Main(run func(ctx context.Context, env Env) error) {
	dir := flag.String("netns-dir", netns.DefaultDir, "directory for the example's named namespaces")
	flag.Parse()
	// The example's host is a sandbox namespace that goes with it: so do
	// the lock files nsnet keeps for it (by default under /run/nsnet).
	lockDir := ""
	if os.Getenv("NSNET_LOCK_DIR") == "" {
		if d, err := os.MkdirTemp("", "nsnet-example-locks-"); err == nil {
			os.Setenv("NSNET_LOCK_DIR", d)
			lockDir = d
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	err := Run(ctx, netns.Dir(*dir), os.Stdout, run)
	cancel()
	if lockDir != "" {
		os.RemoveAll(lockDir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		if errors.Is(err, os.ErrPermission) {
			fmt.Fprintln(os.Stderr, "nsnet examples need root: sudo go run ./examples/...")
		}
		os.Exit(1)
	}
}

// Run makes the sandbox host and runs an example in it, printing to w.
func Run(ctx context.Context, dir netns.Dir, w io.Writer, run func(ctx context.Context, env Env) error) error {
	host, err := netns.New()
	if err != nil {
		return fmt.Errorf("creating the sandbox host namespace: %w", err)
	}
	defer host.Close()
	if err := host.LoopbackUp(); err != nil {
		return err
	}
	log := NewLog(w)
	fmt.Fprintf(w, "sandbox host: %s (the machine's own namespace is not touched)\n", host)
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		return err
	}
	env := Env{Host: host, Dir: dir, Log: log, Alloc: alloc, closers: new([]func())}
	defer env.close()
	if err := run(ctx, env); err != nil {
		return err
	}
	return log.Err()
}

// Expect turns a condition into a check result: err if it is not nil, else
// an error made from format when bad is true, else nil.
func Expect(err error, bad bool, format string, args ...any) error {
	if err != nil {
		return err
	}
	if bad {
		return fmt.Errorf(format, args...)
	}
	return nil
}

// Eventually calls f until it succeeds, for up to 5 s (or until ctx ends),
// and returns its last error: for what another host's control plane makes
// true a little later, as a container on another host becoming reachable.
func Eventually(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Test runs an example as a test: in a sandbox host from nstest (with its
// leak checks) and a private directory for named namespaces, failing the
// test if any check fails. The example's output goes to the test log.
func Test(t *testing.T, run func(ctx context.Context, env Env) error) {
	t.Helper()
	var out strings.Builder
	alloc, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	env := Env{Host: nstest.Host(t), Dir: nstest.Dir(t), Log: NewLog(&out), Alloc: alloc, closers: new([]func())}
	defer env.close()
	err = run(t.Context(), env)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Log.Err(); err != nil {
		t.Fatal(err)
	}
}
