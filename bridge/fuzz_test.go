package bridge_test

import (
	"net/netip"
	"testing"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/ipam"
)

// FuzzConfigValidate: whatever the input, Config.Validate and
// EndpointConfig.Validate return nil or a *nsnet.ValidationError, and never
// panic.
func FuzzConfigValidate(f *testing.F) {
	f.Add("net", "br-x", "10.0.0.0/24", "10.0.0.1", 1500, []byte{2, 0, 0, 0, 0, 1}, "ctr", "eth0", "10.0.0.5", 0)
	f.Add("", "", "", "", 0, []byte(nil), "", "", "", -1)
	f.Add("a/b", "too-long-bridge-name", "127.0.0.0/8", "1.1.1.1", 70000, []byte{1}, "a b", "e/0", "x", 1<<30)
	f.Fuzz(func(t *testing.T, name, br, subnet, gw string, mtu int, mac []byte, id, ifName, addr string, prio int) {
		cfg := bridge.Config{Name: name, Bridge: br, MTU: mtu, MAC: errs.FuzzMAC(mac)}
		if subnet != "" {
			cfg.Subnets = []ipam.SubnetConfig{{Subnet: errs.FuzzPrefix(subnet), Gateway: errs.FuzzAddr(gw)}}
		}
		if why := errs.CheckValid(cfg.Validate(), ipam.ErrOverlap); why != "" {
			t.Fatal(why)
		}
		ep := bridge.EndpointConfig{ID: id, IfName: ifName, MAC: errs.FuzzMAC(mac), GatewayPriority: prio}
		if addr != "" {
			ep.Addrs = []netip.Addr{errs.FuzzAddr(addr)}
		}
		if why := errs.CheckValid(ep.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
