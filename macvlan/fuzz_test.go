package macvlan_test

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/macvlan"
)

// FuzzConfigValidate: whatever the input, Config.Validate and
// EndpointConfig.Validate return nil or a *nsnet.ValidationError, and never
// panic.
func FuzzConfigValidate(f *testing.F) {
	f.Add("net", "eth0", "bridge", "10.0.0.0/24", "10.0.0.1", 1500, "ctr", "eth0", "10.0.0.5", []byte{2, 0, 0, 0, 0, 1}, 0)
	f.Add("", "", "", "", "", 0, "", "", "", []byte(nil), -1)
	f.Add("a/b", "eth0.too-long-name", "passthru", "::/0", "::", 67, "a b", "e/0", "x", []byte{1}, 1<<30)
	f.Fuzz(func(t *testing.T, name, parent, mode, subnet, gw string, mtu int, id, ifName, addr string, mac []byte, prio int) {
		cfg := macvlan.Config{Name: name, Parent: parent, Mode: macvlan.Mode(mode), MTU: mtu}
		if subnet != "" {
			cfg.Subnets = []ipam.SubnetConfig{{Subnet: errs.FuzzPrefix(subnet), Gateway: errs.FuzzAddr(gw)}}
		}
		if why := errs.CheckValid(cfg.Validate(), ipam.ErrOverlap); why != "" {
			t.Fatal(why)
		}
		ep := macvlan.EndpointConfig{ID: id, IfName: ifName, MAC: errs.FuzzMAC(mac), MTU: mtu, GatewayPriority: prio}
		if addr != "" {
			ep.Addrs = []netip.Addr{errs.FuzzAddr(addr)}
		}
		if why := errs.CheckValid(ep.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
