//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/nsnet/nsnet/ipam"
)

// cmdStatus answers STATUS without the daemon: the plugin can take ADDs
// when its state directory is writable and its store answers.
func cmdStatus(a *skel.CmdArgs) error {
	conf, cerr := parseConf(a.StdinData)
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
	switch conf.Store {
	case "file":
		st, err := ipam.OpenFileStore(filepath.Join(conf.StateDir, "ipam"))
		if err != nil {
			return unavailable("nsnet-cni: IPAM file store: %v", err)
		}
		st.Close()
	case "etcd":
		c, err := newEtcdClient(conf.Etcd)
		if err != nil {
			return unavailable("nsnet-cni: etcd %v: %v", conf.Etcd.Endpoints, err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if _, err := c.Get(ctx, etcdPrefix(conf.Etcd)+"ping"); err != nil {
			return unavailable("nsnet-cni: etcd %v does not answer: %v", conf.Etcd.Endpoints, err)
		}
	}
	return nil
}
