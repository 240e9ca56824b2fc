package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// The plugin and its node daemon, built once per test process into a
// directory of their own, as a runtime would find them in its CNI bin
// directory.
var plugin struct {
	once sync.Once
	dir  string
	err  error
}

func pluginDir(t testing.TB) string {
	t.Helper()
	plugin.once.Do(func() {
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("nsnet-cni-test-%d", os.Getuid()))
		if plugin.err = os.MkdirAll(dir, 0o700); plugin.err != nil {
			return
		}
		for bin, pkg := range map[string]string{"nsnet-cni": ".", "nsnet-cnid": "./nsnet-cnid"} {
			path := filepath.Join(dir, bin)
			tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
			out, err := exec.Command("go", "build", "-o", tmp, pkg).CombinedOutput()
			if err != nil {
				plugin.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
			if plugin.err = os.Rename(tmp, path); plugin.err != nil {
				return
			}
		}
		plugin.dir = dir
	})
	if plugin.err != nil {
		t.Fatalf("building the plugin: %v", plugin.err)
	}
	return plugin.dir
}

// hostExec runs plugins with their network namespace set to a sandbox
// host: the exec happens on a thread inside host (netns.NS.Do), so the
// plugin, and the node daemon it starts, live there and never in the
// machine's own namespace.
type hostExec struct {
	host *netns.NS
	raw  invoke.RawExec
}

func (e *hostExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	var out []byte
	var err error
	if derr := e.host.Do(func() error {
		out, err = e.raw.ExecPlugin(ctx, path, stdin, env)
		return nil
	}); derr != nil {
		return nil, derr
	}
	return out, err
}

func (e *hostExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *hostExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

// node is one node of a test: a sandbox host, its state directory, and
// libcni set up as a runtime would have it.
type node struct {
	t     testing.TB
	host  *netns.NS
	dir   string // the plugin's state directory
	cache string // libcni's cache directory
	cni   *libcni.CNIConfig
}

// newNode makes a node on host. At cleanup it removes every attachment
// (GC with no valid attachment) of the networks the test used and stops
// the node daemon, by its PID, before the sandbox's leak check runs.
func newNode(t testing.TB, host *netns.NS) *node {
	t.Helper()
	n := &node{t: t, host: host, dir: shortTempDir(t), cache: t.TempDir()}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t)}, n.cache, &hostExec{host: host})
	t.Cleanup(n.stopDaemon)
	return n
}

// shortTempDir is a temporary directory with a short path: the daemon's
// socket lives in it, and socket paths are short.
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "cni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// stopDaemon stops the node daemon by the PID it wrote, and waits until
// it has exited (its lock is free).
func (n *node) stopDaemon() {
	t := n.t
	b, err := os.ReadFile(filepath.Join(n.dir, "daemon.pid"))
	if err != nil {
		return // never started
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		t.Errorf("daemon.pid: %q", b)
		return
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		t.Errorf("stopping the node daemon %d: %v", pid, err)
		return
	}
	if !n.waitDaemonGone(10 * time.Second) {
		unix.Kill(pid, unix.SIGKILL)
		t.Errorf("the node daemon %d did not exit within 10 s of SIGTERM; log:\n%s", pid, n.log())
		n.waitDaemonGone(5 * time.Second)
	}
}

func (n *node) waitDaemonGone(d time.Duration) bool {
	f, err := os.OpenFile(filepath.Join(n.dir, "daemon.lock"), os.O_RDWR, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			unix.Flock(int(f.Fd()), unix.LOCK_UN)
			return true
		}
	}
	return false
}

func (n *node) daemonPID() int {
	b, _ := os.ReadFile(filepath.Join(n.dir, "daemon.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (n *node) log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "daemon.log"))
	return string(b)
}

// netList parses a conflist whose plugin is nsnet-cni with the given
// fields (stateDir is the node's), and registers a GC with no valid
// attachment at cleanup, which must leave the node clean.
func (n *node) netList(name string, fields map[string]any) *libcni.NetworkConfigList {
	n.t.Helper()
	p := map[string]any{"type": "nsnet-cni", "stateDir": n.dir,
		"capabilities": map[string]bool{"portMappings": true, "aliases": true, "ips": true, "mac": true, "dns": true}}
	for k, v := range fields {
		p[k] = v
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{p}})
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		n.t.Fatalf("conflist: %v", err)
	}
	n.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.cni.GCNetworkList(ctx, list, &libcni.GCArgs{}); err != nil {
			n.t.Errorf("GC of %s at cleanup: %v\n%s", name, err, n.log())
		}
	})
	return list
}

// ctr is a container of a node: its namespace and its runtime arguments.
type ctr struct {
	ns *netns.NS
	rt *libcni.RuntimeConf
}

// nsPath is a path another process opens the namespace by: the test's
// own descriptor, through /proc.
func nsPath(ns *netns.NS) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd()) }

func (n *node) container(id string, caps map[string]any, args ...[2]string) *ctr {
	ns := nstest.Container(n.t, n.host)
	return &ctr{ns: ns, rt: &libcni.RuntimeConf{ContainerID: id, NetNS: nsPath(ns), IfName: "eth0", CapabilityArgs: caps, Args: args}}
}

func (n *node) add(list *libcni.NetworkConfigList, c *ctr) *current.Result {
	n.t.Helper()
	res, err := n.cni.AddNetworkList(n.t.Context(), list, c.rt)
	if err != nil {
		n.t.Fatalf("ADD %s to %s: %v\ndaemon log:\n%s", c.rt.ContainerID, list.Name, err, n.log())
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatalf("ADD result: %v", err)
	}
	return r
}

func (n *node) del(list *libcni.NetworkConfigList, c *ctr) {
	n.t.Helper()
	if err := n.cni.DelNetworkList(n.t.Context(), list, c.rt); err != nil {
		n.t.Fatalf("DEL %s from %s: %v\ndaemon log:\n%s", c.rt.ContainerID, list.Name, err, n.log())
	}
}

// cniErr returns err as a CNI error, failing the test if it is not one.
func cniErr(t testing.TB, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("want a CNI error result, got %T %v", err, err)
	}
	return te
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

const testTimeout = 10 * time.Second

func resultOf(r types.Result) (*current.Result, error) { return current.NewResultFromResult(r) }
