//go:build linux

// Package etcdtest starts a real etcd server for tests: the server of
// go.etcd.io/etcd/server/v3, as a process of its own, in a network
// namespace of its own, with a fresh data directory. A test can restart it
// (same data, same address), compact its history, and connect it to an
// [nstest.Underlay] so that the hosts reach it over the underlay, as
// machines reach their store:
//
//	srv := etcdtest.Start(t)
//	topo := nstest.Underlay(t, 3)
//	srv.Attach(t, topo)                      // etcd at 198.18.0.254:2379 on the underlay
//	c := srv.ClientFrom(t, topo.Hosts[0].NS) // dials from host 1, across the underlay
//	admin := srv.Client(t)                   // dials from the test itself
//
// # The server binary
//
// So that no importer of nsnet depends on the etcd server, the server is
// built, not linked: the first Start (or [Binary]) of any test process
// writes a small main package and its go.mod and go.sum (pinned to etcd
// [Version], embedded in this package) into the user's cache directory,
// os.UserCacheDir()/nsnet-etcd/VERSION-HASH, and runs `go build` there
// with the go command on PATH (`go test` puts its own first), under a file
// lock, so that parallel test binaries of any module share one build and
// later runs start at once. The modules come from the module cache or the
// module proxy, as for any build.
//
// Without the go command, or if the build fails (say, modules cannot be
// downloaded), Start skips the test with the reason; with CI=true it fails
// it instead, so that CI cannot pass by skipping. Start needs the same
// privileges as the nstest fixtures (it makes a namespace) and skips or
// fails the same way without them.
//
// The first build takes about 90 s on the project's 2-core machine with an
// empty build cache (5 s with a warm one); after it, Start costs a process
// start and an election: ~0.2 s, and so does Restart.
//
// The other choice, embedding the server in the test process through
// go.etcd.io/etcd/server/v3/embed, was measured and rejected: it links 194
// more packages (549 against this fixture's 386) into every test binary
// that uses the fixture, compiled with the test's flags (-race: slower
// still), and adds the server to nsnet's go.mod; its listeners would be in
// the test process's namespace; its goroutines would count in nstest.Main's
// leak check; and a "restart" in-process is no crash, where killing a
// process is.
package etcdtest

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Version is the etcd server version the fixture builds.
const Version = "v3.7.3"

// ClientPort and PeerPort are the server's ports, in its own namespace
// (so no other process's ports can collide with them).
const (
	ClientPort = 2379
	PeerPort   = 2380
)

// UnderlayAddr is the server's address on an underlay it is attached to
// (see Server.Attach): the last usable address of nstest.UnderlayPrefix,
// which no host of an Underlay gets.
var UnderlayAddr = netip.MustParseAddr("198.18.0.254")

var (
	//go:embed server/go.mod.txt
	goMod []byte
	//go:embed server/go.sum.txt
	goSum []byte
	//go:embed server/main.go.txt
	mainGo []byte
)

var build struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds the etcd server if no earlier process did (see the package
// doc) and returns its path. It builds at most once per process.
func Binary() (string, error) {
	build.once.Do(func() { build.bin, build.err = buildEtcd() })
	return build.bin, build.err
}

// cacheDir is where the server is built, named by the version and a hash
// of the sources, so that a change of either builds anew.
func cacheDir() (string, error) {
	h := sha256.New()
	for _, b := range [][]byte{goMod, goSum, mainGo} {
		h.Write(b)
	}
	name := Version + "-" + hex.EncodeToString(h.Sum(nil))[:12]
	base, err := os.UserCacheDir()
	if err != nil {
		// No $HOME: a directory of our own in the temporary directory,
		// refused if someone else made it first.
		base = filepath.Join(os.TempDir(), fmt.Sprintf("nsnet-cache-%d", os.Getuid()))
		if err := os.MkdirAll(base, 0o700); err != nil {
			return "", err
		}
		var st unix.Stat_t
		if err := unix.Lstat(base, &st); err != nil {
			return "", err
		}
		if int(st.Uid) != os.Getuid() || st.Mode&0o077 != 0 || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return "", fmt.Errorf("%s is not a private directory of this user", base)
		}
	}
	dir := filepath.Join(base, "nsnet-etcd", name)
	return dir, os.MkdirAll(dir, 0o700)
}

func buildEtcd() (string, error) {
	dir, err := cacheDir()
	if err != nil {
		return "", fmt.Errorf("etcdtest: cache directory: %w", err)
	}
	bin := filepath.Join(dir, "etcd")
	// The binary appears only by rename, complete: if it is there, use it.
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("etcdtest: %w", err)
	}
	defer lock.Close() // and so unlocked
	for {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("etcdtest: locking %s: %w", lock.Name(), err)
	}
	// Another process may have built it while this one waited.
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("etcdtest: no go command on PATH to build the etcd server: %w", err)
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o700); err != nil {
		return "", fmt.Errorf("etcdtest: %w", err)
	}
	for name, b := range map[string][]byte{"go.mod": goMod, "go.sum": goSum, "main.go": mainGo} {
		if err := os.WriteFile(filepath.Join(src, name), b, 0o600); err != nil {
			return "", fmt.Errorf("etcdtest: %w", err)
		}
	}
	tmp := bin + ".tmp"
	cmd := exec.Command(gobin, "build", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("etcdtest: go build in %s: %v\n%s", src, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("etcdtest: %w", err)
	}
	// A line per build, for the record (and the test that only one
	// process of several builds).
	if f, err := os.OpenFile(filepath.Join(dir, "builds.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err == nil {
		fmt.Fprintf(f, "%s built by process %d\n", time.Now().Format(time.RFC3339), os.Getpid())
		f.Close()
	}
	return bin, nil
}

// Server is one etcd server process in a namespace of its own. Its
// methods are safe for concurrent use.
type Server struct {
	bin string
	dir string    // data directory, kept across Restart
	ns  *netns.NS // the server's namespace, kept across Restart

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	underlay bool // attached to an underlay at UnderlayAddr
}

// Start builds the server if needed and starts it with a fresh data
// directory in a new namespace, and waits until it serves. The server is
// killed, and its namespace closed, when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	nstest.Require(t)
	if _, err := Binary(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcdtest: etcd server needed (CI=true, so no skip): %v", err)
		}
		t.Skipf("etcdtest: skipping, no etcd server: %v", err)
	}
	s, err := Launch(t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Launch is Start for programs that are not tests (the examples): it
// starts a server with its data in dir, in a new namespace; the caller
// must Close it.
func Launch(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	ns, err := netns.New()
	if err != nil {
		return nil, fmt.Errorf("etcdtest: %w", err)
	}
	if err := ns.LoopbackUp(); err != nil {
		ns.Close()
		return nil, fmt.Errorf("etcdtest: %w", err)
	}
	s := &Server{bin: bin, dir: dir, ns: ns}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// NS returns the server's namespace.
func (s *Server) NS() *netns.NS { return s.ns }

// Endpoints returns the client URL of the server in its own namespace,
// http://127.0.0.1:2379: the address that Client and NewClient dial from
// inside that namespace.
func (s *Server) Endpoints() []string {
	return []string{fmt.Sprintf("http://127.0.0.1:%d", ClientPort)}
}

// Client returns a new client of the server for the test process itself,
// closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := s.NewClient()
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// NewClient is Client for programs that are not tests: the caller closes
// the client. Its connections are opened in the server's namespace, on
// its loopback.
func (s *Server) NewClient() (*clientv3.Client, error) {
	return newClient(s.ns, s.Endpoints())
}

// Attach connects the server's namespace to topo's underlay bridge, at
// UnderlayAddr (198.18.0.254/24), so that its hosts reach the server at
// http://198.18.0.254:2379 (see ClientFrom). The link is removed when the
// test ends. A server is attached to one underlay at most.
func (s *Server) Attach(t testing.TB, topo *nstest.Topology) {
	t.Helper()
	s.mu.Lock()
	if s.underlay {
		s.mu.Unlock()
		t.Fatal("etcdtest: the server is already attached to an underlay")
	}
	s.underlay = true
	s.mu.Unlock()
	topo.Attach(t, s.ns, netip.PrefixFrom(UnderlayAddr, nstest.UnderlayPrefix.Bits()))
}

// UnderlayEndpoints returns the client URL of the server on the underlay
// it is attached to, http://198.18.0.254:2379.
func (s *Server) UnderlayEndpoints() []string {
	return []string{"http://" + netip.AddrPortFrom(UnderlayAddr, ClientPort).String()}
}

// ClientFrom returns a new client whose connections are opened in ns, a
// host of the underlay the server is attached to, and go to the server
// across the underlay: cutting the host's uplink cuts it from the store.
// It is closed when the test ends. The server must be attached.
func (s *Server) ClientFrom(t testing.TB, ns *netns.NS) *clientv3.Client {
	t.Helper()
	s.mu.Lock()
	attached := s.underlay
	s.mu.Unlock()
	if !attached {
		t.Fatal("etcdtest: ClientFrom: the server is attached to no underlay (call Attach)")
	}
	c, err := newClient(ns, s.UnderlayEndpoints())
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newClient(ns *netns.NS, endpoints []string) (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return ns.Dial(ctx, nil, "tcp", addr)
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
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
	client := fmt.Sprintf("http://0.0.0.0:%d", ClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", PeerPort)
	cmd := exec.Command(s.bin,
		"--name", "nsnet-test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", s.Endpoints()[0],
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "nsnet-test="+peer,
		"--initial-cluster-state", "new",
		// One member: nobody to wait for, so elect at once (in about
		// 100 ms instead of 1 s), which makes Start and Restart quick.
		"--heartbeat-interval", "10",
		"--election-timeout", "100",
		"--log-level", "error",
	)
	// The server's output goes to a file, read back when it fails.
	logPath := filepath.Join(s.dir, "etcd.log")
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("etcdtest: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("etcdtest: %w", err)
	}
	defer logFile.Close() // the server has its own copy
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If the test process dies without cleaning up, so does the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Forked from a thread in the namespace, the server lives there.
	if err := s.ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("etcdtest: start etcd: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	output := func() string {
		b, _ := os.ReadFile(logPath)
		return lastLines(string(b), 10)
	}

	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.ns.Dial(ctx, nil, network, addr)
		},
	}}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := hc.Get(s.Endpoints()[0] + "/health")
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
			return fmt.Errorf("etcdtest: etcd exited: %s", output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcdtest: etcd did not answer within 30s: %s", output())
		}
	}
}

// Stop kills the server (SIGKILL, by its PID: a crash) and waits for it to
// exit. The data directory and the namespace stay, for Restart. Stopping a
// stopped server does nothing.
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

// Close stops the server and closes its namespace. Start's cleanup calls
// it; Launch's caller must.
func (s *Server) Close() {
	s.Stop()
	s.ns.Close()
}

// Restart stops the server and starts it again on the same data, at the
// same addresses.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
}

// Compact compacts the server's history up to its current revision and
// returns that revision: watches from before it get "revision compacted".
func (s *Server) Compact(t testing.TB) int64 {
	t.Helper()
	c, err := s.NewClient()
	if err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "\x00")
	if err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	return rev
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
