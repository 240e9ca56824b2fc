//go:build linux

package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsnet/nsnet/cmd/nsnet-cni/internal/cniconf"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/macvlan"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/overlay"
	"github.com/nsnet/nsnet/portmap"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// daemon is the node daemon: one per state directory, in the node's (the
// plugin's) network namespace. It does the work of every CNI call, keeps
// what must outlive a call (port reservations, the DNS server and its
// listeners, the overlays' control plane) and the attachments' records.
type daemon struct {
	dir  string
	host *netns.NS
	log  *slog.Logger

	nets keylock.Map // one call per network at a time

	mu        sync.Mutex
	fileAlloc *ipam.Allocator
	fileStore *ipam.FileStore
	etcds     map[string]*etcdConn
	bridges   map[string]*bridge.Network
	macvlans  map[string]*macvlan.Network
	overlays  map[string]*overlay.Host // by store and node name
	ports     *portmap.Mapper
	dns       *dnsd.Server
	dnsNets   map[string]*dnsd.Listener // bridge networks' gateway listeners
	ctrDNS    map[string]*dnsd.Listener // overlay attachments' 127.0.0.11 listeners
	inflight  sync.WaitGroup
}

type etcdConn struct {
	client *clientv3.Client
	store  *etcdstore.Store
	alloc  *ipam.Allocator
}

// Main runs the node daemon with its command-line arguments (nsnet-cnid
// -state-dir DIR) and returns the exit code.
func Main(args []string) int {
	fs := flag.NewFlagSet("nsnet-cnid", flag.ContinueOnError)
	dir := fs.String("state-dir", cniconf.DefaultStateDir, "the node's state directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if os.Getenv("NSNET_CNI_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := runDaemon(*dir, log); err != nil {
		log.Error("nsnet-cni daemon", "err", err)
		return 1
	}
	return 0
}

// runDaemon serves the state directory until SIGTERM or SIGINT. A second
// daemon for the same directory exits at once (nil): the first holds the
// lock.
func runDaemon(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "daemon.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil // another daemon serves this directory
		}
		return err
	}
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	ports, err := portmap.New(host, portmap.Config{})
	if err != nil {
		return err
	}
	d := &daemon{dir: dir, host: host, log: log,
		etcds: map[string]*etcdConn{}, bridges: map[string]*bridge.Network{},
		macvlans: map[string]*macvlan.Network{}, overlays: map[string]*overlay.Host{},
		dnsNets: map[string]*dnsd.Listener{}, ctrDNS: map[string]*dnsd.Listener{},
		ports: ports}
	sock := cniconf.SockPath(dir)
	os.Remove(sock) // a dead daemon's: we hold the lock
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(dir, "daemon.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	d.recover()
	log.Info("nsnet-cni daemon serving", "dir", dir, "pid", os.Getpid(), "netns", host.ID().String())

	go func() {
		<-sigs
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		d.inflight.Add(1)
		go func() {
			defer d.inflight.Done()
			d.serve(c)
		}()
	}
	d.inflight.Wait()
	os.Remove(filepath.Join(dir, "daemon.pid"))
	return d.shutdown()
}

func (d *daemon) serve(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req cniconf.Request
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	var resp cniconf.Response
	if req.PluginNS != d.host.ID().String() {
		resp.Err = types.NewError(types.ErrInternal, fmt.Sprintf(
			"nsnet-cni: the daemon of %s runs in network namespace %s, the plugin in %s: one state directory per node namespace",
			d.dir, d.host.ID(), req.PluginNS), "")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		t0 := time.Now()
		res, err := d.handle(ctx, req)
		cancel()
		d.log.Debug("handled", "cmd", req.Command, "container", req.ContainerID, "took", time.Since(t0), "err", err)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				te = types.NewError(classify(err), err.Error(), "")
			}
			resp.Err = te
		} else {
			resp.Result = res
		}
	}
	json.NewEncoder(c).Encode(resp)
}

// classify gives the CNI error code of an error of the libraries.
func classify(err error) uint {
	var ve *netns.ValidationError
	var ive *ipam.ValidationError
	switch {
	case errors.As(err, &ve), errors.As(err, &ive):
		return types.ErrInvalidNetworkConfig
	case errors.Is(err, ipam.ErrAddrInUse), errors.Is(err, portmap.ErrPortInUse), errors.Is(err, portmap.ErrConflict):
		return cniconf.ErrAddrInUse
	case errors.Is(err, ipam.ErrExhausted):
		return cniconf.ErrExhausted
	case errors.Is(err, bridge.ErrExists), errors.Is(err, macvlan.ErrExists), errors.Is(err, ipam.ErrOverlap):
		return cniconf.ErrNetworkConflict
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ipam.ErrClosed):
		return types.ErrTryAgainLater
	}
	return types.ErrInternal
}

func (d *daemon) handle(ctx context.Context, req cniconf.Request) (json.RawMessage, error) {
	conf, cerr := cniconf.Parse(req.Stdin)
	if cerr != nil {
		return nil, cerr
	}
	defer d.nets.Lock(conf.Name)()
	if conf.Mode == cniconf.ModeOverlay {
		// The node's part of the overlays is shared by its overlay
		// networks: a GC of one that closes it waits for ADDs to others.
		defer d.nets.Lock("\x00overlay " + d.overlayKey(conf))()
	}
	switch req.Command {
	case "ADD":
		return d.add(ctx, conf, req)
	case "DEL":
		return nil, d.del(ctx, conf, req.ContainerID, req.IfName, req.Netns)
	case "CHECK":
		return nil, d.check(ctx, conf, req)
	case "GC":
		return nil, d.gc(ctx, conf)
	case "STATUS":
		return nil, d.status(ctx, conf)
	}
	return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "nsnet-cni: unknown command "+req.Command, "")
}

// status: the node can take ADDs if its store answers (the plugin has
// checked the state directory).
func (d *daemon) status(ctx context.Context, conf *cniconf.NetConf) error {
	if conf.Store == "etcd" {
		d.mu.Lock()
		ec := d.etcds[etcdKey(conf.Etcd)]
		d.mu.Unlock()
		if ec != nil {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if _, err := ec.client.Get(rctx, etcdPrefix(conf.Etcd)+"ping"); err != nil {
				return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("nsnet-cni: etcd %v does not answer: %v", conf.Etcd.Endpoints, err), "")
			}
			return nil
		}
	}
	if _, _, err := d.allocator(ctx, conf); err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return types.NewError(types.ErrPluginNotAvailable, te.Msg, te.Details)
		}
		return types.NewError(types.ErrPluginNotAvailable, "nsnet-cni: IPAM store: "+err.Error(), "")
	}
	return nil
}

// endpointID names an attachment in the libraries: at most 64 bytes,
// derived from the network, the container and the interface.
func endpointID(network, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return "c" + hex.EncodeToString(sum[:])[:24]
}

// --- stores ---

func (d *daemon) allocator(ctx context.Context, conf *cniconf.NetConf) (*ipam.Allocator, ipam.Store, error) {
	if conf.Store == "etcd" {
		ec, err := d.etcd(ctx, conf.Etcd)
		if err != nil {
			return nil, nil, err
		}
		return ec.alloc, ec.store, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fileAlloc == nil {
		st, err := ipam.OpenFileStore(filepath.Join(d.dir, "ipam"))
		if err != nil {
			return nil, nil, err
		}
		a, err := ipam.New(st, ipam.Config{})
		if err != nil {
			st.Close()
			return nil, nil, err
		}
		d.fileStore, d.fileAlloc = st, a
	}
	return d.fileAlloc, d.fileStore, nil
}

func etcdKey(e *cniconf.EtcdConf) string { return strings.Join(e.Endpoints, ",") + "|" + etcdPrefix(e) }

func etcdPrefix(e *cniconf.EtcdConf) string {
	if e.Prefix == "" {
		return "/nsnet/"
	}
	return e.Prefix
}

func (d *daemon) etcd(ctx context.Context, e *cniconf.EtcdConf) (*etcdConn, error) {
	key := etcdKey(e)
	d.mu.Lock()
	defer d.mu.Unlock()
	if ec, ok := d.etcds[key]; ok {
		return ec, nil
	}
	c, err := newEtcdClient(e)
	if err != nil {
		return nil, err
	}
	st, err := etcdstore.New(c, etcdPrefix(e))
	if err == nil {
		// Reachable? A plain read, bounded.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = c.Get(rctx, etcdPrefix(e)+"ping")
		cancel()
	}
	if err != nil {
		c.Close()
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("nsnet-cni: etcd %v: %v", e.Endpoints, err), "")
	}
	a, _ := ipam.New(st, ipam.Config{})
	ec := &etcdConn{client: c, store: st, alloc: a}
	d.etcds[key] = ec
	return ec, nil
}

func newEtcdClient(e *cniconf.EtcdConf) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second,
		Logger: zapNop()})
}

// dnsServer returns the node's DNS server, made at the first need.
func (d *daemon) dnsServer(conf *cniconf.NetConf) (*dnsd.Server, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dns != nil {
		return d.dns, nil
	}
	cfg := dnsd.Config{NS: d.host, Domain: conf.Domain, Logger: d.log}
	if conf.DNSUpstreams != nil {
		cfg.Upstreams = []netip.AddrPort{}
		for _, u := range *conf.DNSUpstreams {
			cfg.Upstreams = append(cfg.Upstreams, netip.MustParseAddrPort(u))
		}
	}
	s, err := dnsd.New(cfg)
	if err != nil {
		return nil, err
	}
	d.dns = s
	return s, nil
}

// --- shutdown ---

// shutdown lets go of what the daemon holds. Kernel state stays for the
// next daemon, unless no attachment is left: then the overlays' hosts say
// goodbye (their devices and records go) too.
func (d *daemon) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs, _ := d.records("")
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.dnsNets {
		errs = append(errs, l.Close())
	}
	for _, l := range d.ctrDNS {
		errs = append(errs, l.Close())
	}
	if d.dns != nil {
		errs = append(errs, d.dns.Close())
	}
	if len(recs) == 0 {
		for _, h := range d.overlays {
			errs = append(errs, h.Close(ctx))
		}
	}
	errs = append(errs, d.ports.Close())
	for _, ec := range d.etcds {
		ec.store.Close()
		ec.client.Close()
	}
	if d.fileStore != nil {
		errs = append(errs, d.fileStore.Close())
	}
	return errors.Join(errs...)
}
