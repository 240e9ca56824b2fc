package nat_test

import (
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/nat"
)

// FuzzNetworkValidate: whatever the input, Validate returns nil, a
// *nsnet.ValidationError or ErrInternal, and never panics.
func FuzzNetworkValidate(f *testing.F) {
	f.Add("br-x", "10.0.0.0/24", "fd00::/64", false)
	f.Add("", "", "", true)
	f.Add("br x", "::ffff:10.0.0.0/120", "10.0.0.1/0", false)
	f.Fuzz(func(t *testing.T, bridge, s1, s2 string, internal bool) {
		n := nat.Network{Bridge: bridge, Internal: internal}
		for _, s := range []string{s1, s2} {
			if s != "" {
				n.Subnets = append(n.Subnets, errs.FuzzPrefix(s))
			}
		}
		if why := errs.CheckValid(n.Validate(), nat.ErrInternal); why != "" {
			t.Fatal(why)
		}
	})
}
