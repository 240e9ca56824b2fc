// Package etcdtest starts a real etcd server for tests, on loopback, with a
// fresh data directory: the server of go.etcd.io/etcd/server/v3, built from
// the nested module in ./etcd (so that nsnet itself never depends on the
// etcd server) with the go command on PATH, once per test process.
//
// Without the go command, or if the build fails (say, modules cannot be
// downloaded), Start skips the test with the reason; with CI=true it fails
// it instead, so that CI cannot pass by skipping.
package etcdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Server is one etcd server process. Its methods are safe for concurrent use.
type Server struct {
	bin       string
	dir       string // data directory, kept across Restart
	clientURL string
	peerURL   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *bytes.Buffer
}

var build struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds the etcd server (once per process) and returns its path.
func Binary() (string, error) {
	build.once.Do(func() { build.bin, build.err = buildEtcd() })
	return build.bin, build.err
}

func buildEtcd() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("etcdtest: cannot find its own source directory")
	}
	src := filepath.Join(filepath.Dir(file), "etcd")
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("etcdtest: no go command on PATH to build etcd: %w", err)
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("nsnet-etcdtest-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("etcdtest: %w", err)
	}
	bin := filepath.Join(dir, "etcd")
	// Build to a name of our own and rename, so that test processes building
	// at the same time never run a half-written binary.
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	cmd := exec.Command(gobin, "build", "-C", src, "-o", tmp, ".")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("etcdtest: go build -C %s: %v\n%s", src, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("etcdtest: %w", err)
	}
	return bin, nil
}

// Start builds (once per process) and starts an etcd server listening on
// 127.0.0.1 only, with a fresh data directory, and waits until it serves.
// The server is killed when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if _, err := Binary(); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("etcd server needed (CI=true, so no skip): %v", err)
		}
		tb.Skipf("skipping: no etcd server: %v", err)
	}
	s, err := Launch(tb.TempDir())
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Launch is Start for programs that are not tests (the examples): it
// starts a server with its data in dir; the caller must Stop it.
func Launch(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir}
	var last error
	for range 5 { // the free ports found may be taken before etcd binds them
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		s.clientURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		s.peerURL = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		if last = s.start(); last == nil {
			return s, nil
		}
		s.Stop()
		os.RemoveAll(filepath.Join(s.dir, "data"))
	}
	return nil, last
}

// Endpoints returns the client URLs of the server.
func (s *Server) Endpoints() []string { return []string{s.clientURL} }

// Client returns a new client of the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	c, err := s.NewClient()
	if err != nil {
		tb.Fatalf("etcdtest: client: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// NewClient returns a new client of the server; the caller closes it.
func (s *Server) NewClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      nopLogger(),
	})
}

// PID returns the process ID of the running server, or 0.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin,
		"--name", "nsnet-test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", s.clientURL,
		"--advertise-client-urls", s.clientURL,
		"--listen-peer-urls", s.peerURL,
		"--initial-advertise-peer-urls", s.peerURL,
		"--initial-cluster", "nsnet-test="+s.peerURL,
		"--initial-cluster-state", "new",
		"--log-level", "error",
	)
	stderr := new(bytes.Buffer)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	// If the test process dies without cleaning up, so does the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited, s.stderr = cmd, exited, stderr

	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get(s.clientURL + "/health")
		if err == nil {
			var body [256]byte
			n, _ := resp.Body.Read(body[:])
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body[:n]), `"health":"true"`) {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("etcd exited: %s", lastLines(stderr.String(), 10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd did not answer on %s within 30s: %s", s.clientURL, lastLines(stderr.String(), 10))
		}
	}
}

// Stop kills the server (by its PID) and waits for it to exit. The data
// directory stays, for Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Restart stops the server and starts it again on the same ports and data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		tb.Fatalf("etcdtest: restart: %v", err)
	}
}

// Compact compacts the server's history up to its current revision and
// returns that revision: watches from before it get "revision compacted".
func (s *Server) Compact(tb testing.TB) int64 {
	tb.Helper()
	c := s.Client(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "\x00")
	if err != nil {
		tb.Fatalf("etcdtest: compact: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		tb.Fatalf("etcdtest: compact: %v", err)
	}
	return rev
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
