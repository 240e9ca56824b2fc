//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/nsnet/nsnet/netns"
)

// supported are the CNI versions the plugin speaks.
var supported = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

func main() {
	if len(os.Args) > 1 && os.Args[1] == "daemon" {
		os.Exit(daemonMain(os.Args[2:]))
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return call("ADD", a) },
		Del:    func(a *skel.CmdArgs) error { return call("DEL", a) },
		Check:  func(a *skel.CmdArgs) error { return call("CHECK", a) },
		GC:     func(a *skel.CmdArgs) error { return call("GC", a) },
		Status: cmdStatus,
	}, supported, "CNI plugin nsnet-cni: bridge, macvlan and overlay networks of nsnet")
}

// request is what the plugin sends the node daemon: one CNI call.
type request struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string
	Stdin       []byte
	// PluginNS is the namespace the plugin runs in: the daemon must run in
	// the same, the node's.
	PluginNS string
}

// response is the daemon's answer: a result to print, or a CNI error.
type response struct {
	Result json.RawMessage `json:",omitempty"`
	Err    *types.Error    `json:",omitempty"`
}

func sockPath(stateDir string) string { return filepath.Join(stateDir, "nsnet-cni.sock") }

// call checks the configuration, hands the call to the node daemon
// (starting it if none runs) and prints its result.
func call(cmd string, a *skel.CmdArgs) error {
	conf, cerr := parseConf(a.StdinData)
	if cerr != nil {
		return cerr
	}
	if cmd == "ADD" {
		if _, cerr := parseAttach(conf, a.Args); cerr != nil {
			return cerr
		}
	}
	self, err := netns.Current()
	if err != nil {
		return types.NewError(types.ErrInternal, "nsnet-cni: "+err.Error(), "")
	}
	self.Close()
	req := request{Command: cmd, ContainerID: a.ContainerID, Netns: a.Netns, IfName: a.IfName,
		Args: a.Args, Stdin: a.StdinData, PluginNS: self.ID().String()}
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

// roundTrip sends req to the daemon of stateDir, starting one if none
// answers.
func roundTrip(ctx context.Context, stateDir string, req request) (*response, error) {
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
	var resp response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("reading its answer: %w", err)
	}
	return &resp, nil
}

func dialDaemon(ctx context.Context, stateDir string) (net.Conn, error) {
	path := sockPath(stateDir)
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

// startDaemon starts `nsnet-cni daemon` for stateDir, detached (a session
// of its own, its output in daemon.log), in this process's namespace. If
// another starts at the same moment, one of them keeps the state
// directory's lock and the other exits.
func startDaemon(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(stateDir, "daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, "daemon", "-state-dir", stateDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s daemon: %w", exe, err)
	}
	return cmd.Process.Release()
}

// errCode maps an error of the node's work to a CNI error code.
func errCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return types.ErrInternal
}
