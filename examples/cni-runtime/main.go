//go:build linux

// Command cni-runtime is what a container runtime (containerd, CRI-O,
// Podman) does with the nsnet-cni plugin, through libcni, the library
// they use: it loads a conflist (bridge mode, with portMappings and dns),
// asks STATUS, ADDs two containers with a published port and names,
// checks that they reach each other by name, that the outside reaches the
// published port and the containers the outside (masqueraded), runs
// CHECK, DEL, and GC, and stops the node daemon.
//
//	go run ./examples/cni-runtime                          # as root; builds the plugin
//	go run ./examples/cni-runtime -cni-bin-dir /opt/cni/bin  # or uses an installed one
//
// Everything happens in a sandbox host namespace: the plugin is executed
// on a thread inside it (a runtime would run it in its own namespace, the
// node's), so nothing of the machine's own namespace changes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"golang.org/x/sys/unix"
)

var binDir = flag.String("cni-bin-dir", "", "directory with nsnet-cni and nsnet-cnid (default: build them)")

func main() { check.Main(run) }

// The conflist a runtime would find in /etc/cni/net.d (this is
// cmd/nsnet-cni/examples/bridge.conflist, with a state directory of the
// example's own).
const conflist = `{
  "cniVersion": "1.1.0",
  "name": "nsnet",
  "plugins": [{
    "type": "nsnet-cni",
    "mode": "bridge",
    "stateDir": %q,
    "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
    "dnsServer": true,
    "dnsUpstreams": [],
    "capabilities": {"portMappings": true, "dns": true, "aliases": true, "ips": true, "mac": true}
  }]
}`

// hostExec runs plugins inside the sandbox host.
type hostExec struct {
	host *netns.NS
	raw  invoke.RawExec
}

func (e *hostExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) (out []byte, err error) {
	if derr := e.host.Do(func() error {
		out, err = e.raw.ExecPlugin(ctx, path, stdin, env)
		return nil
	}); derr != nil {
		return nil, derr
	}
	return out, err
}
func (e *hostExec) FindInPath(p string, paths []string) (string, error) {
	return invoke.FindInPath(p, paths)
}
func (e *hostExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

func run(ctx context.Context, env check.Env) error {
	log, host := env.Log, env.Host
	out, err := env.Outside(ctx)
	if !log.OK("the host's uplink, the outside at "+out.Addr.String(), err) {
		return err
	}
	tmp, err := os.MkdirTemp("", "cni-runtime")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := *binDir
	if bins == "" {
		bins = filepath.Join(tmp, "bin")
		for name, pkg := range map[string]string{"nsnet-cni": "github.com/nsnet/nsnet/cmd/nsnet-cni", "nsnet-cnid": "github.com/nsnet/nsnet/cmd/nsnet-cni/nsnet-cnid"} {
			if o, err := exec.Command("go", "build", "-o", filepath.Join(bins, name), pkg).CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", pkg, err, o)
			}
		}
		log.Printf("built nsnet-cni and nsnet-cnid into %s", bins)
	}
	state := filepath.Join(tmp, "state")
	list, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(conflist, state)))
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bins}, filepath.Join(tmp, "cache"), &hostExec{host: host})
	// Whatever happens, no attachment and no daemon outlive the example.
	defer func() {
		log.OK("GC with no valid attachment removes what is left, and the network", cni.GCNetworkList(context.WithoutCancel(ctx), list, &libcni.GCArgs{}))
		log.OK("node daemon stopped", stopDaemon(state))
	}()

	log.OK("STATUS: the plugin can take ADDs", cni.GetStatusNetworkList(ctx, list))

	type ctr struct {
		ns  *netns.NS
		rt  *libcni.RuntimeConf
		res *current.Result
	}
	add := func(id string, caps map[string]any) (*ctr, error) {
		ns, err := env.Container()
		if err != nil {
			return nil, err
		}
		rt := &libcni.RuntimeConf{ContainerID: id, IfName: "eth0", CapabilityArgs: caps,
			NetNS: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd())}
		t0 := time.Now()
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			log.OK("ADD "+id, err)
			return nil, err
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return nil, err
		}
		log.OK(fmt.Sprintf("ADD %s in %.1f ms: %s %s, nameserver %v", id, float64(time.Since(t0).Microseconds())/1000,
			res.Interfaces[1].Name, res.IPs[0].Address.String(), res.DNS.Nameservers), nil)
		return &ctr{ns, rt, res}, nil
	}
	web, err := add("web", map[string]any{"aliases": []string{"web"},
		"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}})
	if err != nil {
		return err
	}
	client, err := add("client", map[string]any{"aliases": []string{"client"}})
	if err != nil {
		return err
	}
	webAddr, _ := netip.AddrFromSlice(web.res.IPs[0].Address.IP.To4())
	clientAddr, _ := netip.AddrFromSlice(client.res.IPs[0].Address.IP.To4())

	srv, err := nstest.NewServer(web.ns, "tcp", "0.0.0.0:80")
	if err != nil {
		return err
	}
	defer srv.Close()
	ns := netip.MustParseAddr(client.res.DNS.Nameservers[0])
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return client.ns.Dial(ctx, nil, network, netip.AddrPortFrom(ns, 53).String())
	}}
	got, err := resolver.LookupNetIP(ctx, "ip4", "web")
	log.OK(fmt.Sprintf("client resolves web to %v", got), check.Expect(err, len(got) != 1 || got[0] != webAddr, "want %s", webAddr))
	r, err := nstest.Exchange(ctx, client.ns, "tcp", netip.AddrPortFrom(webAddr, 80).String(), "hi")
	log.OK("client reaches web's port 80", check.Expect(err, r.Peer.Addr() != clientAddr, "peer %s", r.Peer))
	at := netip.AddrPortFrom(out.Uplink, 8080).String()
	r, err = nstest.Exchange(ctx, out.NS, "tcp", at, "hi")
	log.OK("the outside reaches web through the published "+at, check.Expect(err, r.Peer.Addr() != out.Addr, "peer %s", r.Peer))
	log.OK("web reaches the outside, which sees the host's address",
		check.Exchange(ctx, web.ns, out.NS, out.Addr.String()+":80", out.Uplink.String()))
	log.OK("CHECK web", cni.CheckNetworkList(ctx, list, web.rt))

	for _, c := range []*ctr{web, client} {
		log.OK("DEL "+c.rt.ContainerID, cni.DelNetworkList(ctx, list, c.rt))
		log.OK("DEL "+c.rt.ContainerID+" again (gone is fine)", cni.DelNetworkList(ctx, list, c.rt))
	}
	_, err = nstest.Exchange(ctx, out.NS, "tcp", at, "hi")
	log.OK("after DEL, "+at+" is no longer published", check.Expect(nil, err == nil, "still answers"))
	return nil
}

// stopDaemon stops the node daemon by the PID it wrote and waits until it
// has let go of its lock.
func stopDaemon(state string) error {
	b, err := os.ReadFile(filepath.Join(state, "daemon.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	f, err := os.Open(filepath.Join(state, "daemon.lock"))
	if err != nil {
		return err
	}
	defer f.Close()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			return nil
		}
	}
	return fmt.Errorf("daemon %d still running", pid)
}
