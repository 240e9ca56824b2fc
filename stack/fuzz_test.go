package stack_test

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/portmap"
	"github.com/nsnet/nsnet/stack"
)

// FuzzValidate: whatever the input, the Validate of Config, NetworkConfig
// and ContainerConfig return nil or a *nsnet.ValidationError, and never
// panic.
func FuzzValidate(f *testing.F) {
	f.Add("/var/lib/x", "10.0.0.1:53", "app", "web", "www", 8080, 80, "tcp")
	f.Add("", "0.0.0.0:53", "", "", "a b", -1, 0, "icmp")
	f.Add("rel/dir", "", "a/b", "x\x00", "", 70000, 70000, "")
	f.Fuzz(func(t *testing.T, dir, upstream, network, id, alias string, hostPort, ctrPort int, proto string) {
		cfg := stack.Config{StateDir: dir}
		if ap, err := netip.ParseAddrPort(upstream); err == nil {
			cfg.Upstreams = []netip.AddrPort{ap}
		}
		if why := errs.CheckValid(cfg.Validate()); why != "" {
			t.Fatal(why)
		}
		if why := errs.CheckValid(stack.NetworkConfig{Name: network}.Validate()); why != "" {
			t.Fatal(why)
		}
		c := stack.ContainerConfig{ID: id, Networks: []stack.Attachment{{Network: network, Aliases: []string{alias}}},
			Ports: []portmap.Mapping{{Proto: proto, HostPort: hostPort, CtrPort: ctrPort}}}
		if why := errs.CheckValid(c.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
