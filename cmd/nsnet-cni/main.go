//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"
	"golang.org/x/sys/unix"
)

// supported are the CNI versions the plugin speaks.
var supported = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// daemonName is the node daemon's binary, looked for next to the plugin
// (the CNI bin directory), then on PATH.
const daemonName = "nsnet-cnid"

func main() {
	// A plugin lives for a few milliseconds and allocates little: no GC.
	debug.SetGCPercent(-1)
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return call("ADD", a) },
		Del:    func(a *skel.CmdArgs) error { return call("DEL", a) },
		Check:  func(a *skel.CmdArgs) error { return call("CHECK", a) },
		GC:     func(a *skel.CmdArgs) error { return call("GC", a) },
		Status: status,
	}, supported, "CNI plugin nsnet-cni: bridge, macvlan and overlay networks of nsnet")
}

// call checks the configuration, hands the call to the node daemon
// (starting it if none runs) and prints its result.
func call(cmd string, a *skel.CmdArgs) error {
	conf, cerr := cniconf.Parse(a.StdinData)
	if cerr != nil {
		return cerr
	}
	if cmd == "ADD" {
		if _, cerr := cniconf.ParseAttach(conf, a.Args); cerr != nil {
			return cerr
		}
	}
	self, err := ownNetns()
	if err != nil {
		return types.NewError(types.ErrInternal, "nsnet-cni: "+err.Error(), "")
	}
	req := cniconf.Request{Command: cmd, ContainerID: a.ContainerID, Netns: a.Netns, IfName: a.IfName,
		Args: a.Args, Stdin: a.StdinData, PluginNS: self}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := roundTrip(ctx, conf.StateDir, req)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "nsnet-cni: node daemon: "+err.Error(), "")
	}
	if resp.Err != nil {
		return resp.Err
	}
	if len(resp.Result) > 0 {
		_, err := os.Stdout.Write(resp.Result)
		return err
	}
	return nil
}

// status answers STATUS: the plugin can take ADDs when its state
// directory is writable and the daemon finds its store answering.
func status(a *skel.CmdArgs) error {
	conf, cerr := cniconf.Parse(a.StdinData)
	if cerr != nil {
		return cerr
	}
	unavailable := func(format string, args ...any) error {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf(format, args...), "")
	}
	if err := os.MkdirAll(conf.StateDir, 0o700); err != nil {
		return unavailable("nsnet-cni: state directory %s: %v", conf.StateDir, err)
	}
	f, err := os.CreateTemp(conf.StateDir, ".status-*")
	if err != nil {
		return unavailable("nsnet-cni: state directory %s is not writable: %v", conf.StateDir, err)
	}
	f.Close()
	os.Remove(f.Name())
	if err := call("STATUS", a); err != nil {
		if te, ok := err.(*types.Error); ok && te.Code == types.ErrTryAgainLater {
			te.Code = types.ErrPluginNotAvailable
		}
		return err
	}
	return nil
}

// ownNetns names the network namespace the plugin runs in, as the daemon
// compares it: "net:[inode]".
func ownNetns() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("net:[%d]", st.Ino), nil
}

// roundTrip sends req to the daemon of stateDir, starting one if none
// answers.
func roundTrip(ctx context.Context, stateDir string, req cniconf.Request) (*cniconf.Response, error) {
	c, err := dialDaemon(ctx, stateDir)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	var resp cniconf.Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("reading its answer: %w", err)
	}
	return &resp, nil
}

func dialDaemon(ctx context.Context, stateDir string) (net.Conn, error) {
	path := cniconf.SockPath(stateDir)
	var d net.Dialer
	if c, err := d.DialContext(ctx, "unix", path); err == nil {
		return c, nil
	}
	if err := startDaemon(stateDir); err != nil {
		return nil, err
	}
	wait := 500 * time.Microsecond
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no answer on %s (see %s): %w", path, filepath.Join(stateDir, "daemon.log"), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// startDaemon starts nsnet-cnid for stateDir, detached (a session of its
// own, its output in daemon.log), in this process's namespace. If another
// starts at the same moment, one of them keeps the state directory's lock
// and the other exits.
func startDaemon(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	bin, err := daemonPath()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(stateDir, "daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-state-dir", stateDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	return cmd.Process.Release()
}

func daemonPath() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), daemonName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(daemonName)
	if err != nil {
		return "", fmt.Errorf("%s is neither next to the plugin nor on PATH: install it with the plugin", daemonName)
	}
	return p, nil
}
