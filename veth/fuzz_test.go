package veth_test

import (
	"testing"

	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/veth"
)

// FuzzConfigValidate: whatever the input, Validate returns nil or a
// *nsnet.ValidationError, and never panics.
func FuzzConfigValidate(f *testing.F) {
	f.Add("veth0", "eth0", 1500, []byte{2, 0, 0, 0, 0, 1}, []byte(nil), "alias")
	f.Add("", "", 0, []byte(nil), []byte{1, 0, 0, 0, 0, 0}, "")
	f.Add("a/b", "eth0", 67, []byte{0, 0, 0, 0, 0, 0}, []byte{2}, "")
	f.Fuzz(func(t *testing.T, name, peer string, mtu int, mac, peerMAC []byte, alias string) {
		cfg := veth.Config{Name: name, MTU: mtu, MAC: errs.FuzzMAC(mac), Alias: alias, Peer: veth.End{Name: peer, MAC: errs.FuzzMAC(peerMAC)}}
		if why := errs.CheckValid(cfg.Validate()); why != "" {
			t.Fatal(why)
		}
	})
}
