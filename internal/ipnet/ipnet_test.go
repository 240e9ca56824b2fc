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

func TestLast(t *testing.T) {
	for p, want := range map[string]string{
		"10.0.0.0/24": "10.0.0.255", "10.0.0.7/30": "10.0.0.7", "0.0.0.0/0": "255.255.255.255",
		"172.21.0.0/16": "172.21.255.255", "fd00::/64": "fd00::ffff:ffff:ffff:ffff", "fd00::1/128": "fd00::1",
	} {
		if got := Last(netip.MustParsePrefix(p)); got != netip.MustParseAddr(want) {
			t.Errorf("Last(%s) = %s, want %s", p, got, want)
		}
	}
}
