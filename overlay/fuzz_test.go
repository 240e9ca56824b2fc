package overlay_test

import (
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/overlay"
)

// FuzzConfigValidate: whatever the input, Validate returns nil or a
// *nsnet.ValidationError, and never panics.
func FuzzConfigValidate(f *testing.F) {
	f.Add("ov", uint32(42), "10.20.0.0/16", "10.20.0.1", 4789, 1450)
	f.Add("", uint32(0), "", "", -1, 0)
	f.Add("a b", uint32(1<<24), "127.0.0.0/8", "::", 70000, 1279)
	f.Fuzz(func(t *testing.T, name string, vni uint32, subnet, gw string, port, mtu int) {
		c := overlay.Config{Name: name, VNI: vni, Port: port, MTU: mtu}
		if subnet != "" {
			c.Subnets = []ipam.SubnetConfig{{Subnet: errs.FuzzPrefix(subnet), Gateway: errs.FuzzAddr(gw)}}
		}
		if why := errs.CheckValid(c.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
