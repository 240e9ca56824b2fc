package portmap_test

import (
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/portmap"
)

// FuzzValidate: whatever the input, Mapping.Validate and Config.Validate
// return nil or a *nsnet.ValidationError, and never panic.
func FuzzValidate(f *testing.F) {
	f.Add("tcp", "127.0.0.1", 8080, 0, "172.17.0.2", 80, 0, "web", 32768, 60999)
	f.Add("", "", 0, 0, "", 0, 0, "", 0, 0)
	f.Add("sctp", "::1", 70009, 9, "::ffff:10.0.0.1", -1, 65536, "a\x00b", 60999, 32768)
	f.Fuzz(func(t *testing.T, proto, hostAddr string, hostPort, hostEnd int, ctrAddr string, ctrPort, ctrEnd int, id string, e0, e1 int) {
		m := portmap.Mapping{Proto: proto, HostAddr: errs.FuzzAddr(hostAddr), HostPort: hostPort, HostPortEnd: hostEnd,
			CtrAddr: errs.FuzzAddr(ctrAddr), CtrPort: ctrPort, CtrPortEnd: ctrEnd, ID: id}
		if why := errs.CheckValid(m.Validate()); why != "" {
			t.Fatal(why)
		}
		if why := errs.CheckValid(portmap.Config{EphemeralPorts: [2]int{e0, e1}}.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
