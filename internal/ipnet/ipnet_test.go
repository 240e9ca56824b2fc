package ipnet

import (
	"net/netip"
	"testing"
)

func TestFrom(t *testing.T) {
	for _, s := range []string{"172.17.0.2/16", "fd00::5/64", "10.0.0.0/8", "0.0.0.0/0"} {
		p := netip.MustParsePrefix(s)
		if got := From(p).String(); got != s {
			t.Errorf("From(%s) = %s", s, got)
		}
	}
}
