package macvlan

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

func TestConfigValidate(t *testing.T) {
	sub := func(s, gw string) []ipam.SubnetConfig {
		c := ipam.SubnetConfig{Subnet: netip.MustParsePrefix(s)}
		if gw != "" {
			c.Gateway = netip.MustParseAddr(gw)
		}
		return []ipam.SubnetConfig{c}
	}
	for _, tc := range []struct {
		cfg   Config
		field string // "" if valid
	}{
		{Config{Name: "n", Parent: "eth0"}, ""},
		{Config{Name: "n", Parent: "eth0", Mode: ModePassthru, Subnets: sub("172.29.0.0/16", "172.29.0.254"), MTU: 9000}, ""},
		{Config{Parent: "eth0"}, "Config.Name"},
		{Config{Name: "-n", Parent: "eth0"}, "Config.Name"},
		{Config{Name: "n"}, "Config.Parent"},
		{Config{Name: "n", Parent: "a-very-long-parent"}, "Config.Parent"},
		{Config{Name: "n", Parent: "eth0", Mode: "source"}, "Config.Mode"},
		{Config{Name: "n", Parent: "eth0", MTU: 67}, "Config.MTU"},
		{Config{Name: "n", Parent: "eth0", Subnets: sub("172.29.0.1/16", "")}, "Config.Subnets[0].Subnet"},
		{Config{Name: "n", Parent: "eth0", Subnets: sub("172.29.0.0/16", "10.0.0.1")}, "Config.Subnets[0].Gateway"},
		{Config{Name: "n", Parent: "eth0", Labels: map[string]string{"k": strings.Repeat("v", 300)}}, "Config.Labels"},
	} {
		err := tc.cfg.Validate()
		var ve *netns.ValidationError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.cfg, err)
		case tc.field != "" && (!errors.As(err, &ve) || ve.Field != tc.field):
			t.Errorf("%+v: %v, want a ValidationError of %s", tc.cfg, err, tc.field)
		}
	}
}

func TestEndpointConfigValidate(t *testing.T) {
	ns := &netns.NS{}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		ep    EndpointConfig
		field string
	}{
		{EndpointConfig{ID: "c", NS: ns}, ""},
		{EndpointConfig{ID: "c", NS: ns, Addrs: []netip.Addr{a("172.29.0.1"), a("fd00::1")}, MTU: 1400}, ""},
		{EndpointConfig{NS: ns}, "EndpointConfig.ID"},
		{EndpointConfig{ID: strings.Repeat("c", 81), NS: ns}, "EndpointConfig.ID"},
		{EndpointConfig{ID: "c"}, "EndpointConfig.NS"},
		{EndpointConfig{ID: "c", NS: ns, IfName: "eth/0"}, "EndpointConfig.IfName"},
		{EndpointConfig{ID: "c", NS: ns, MAC: []byte{1, 2, 3, 4, 5, 6}}, "EndpointConfig.MAC"},
		{EndpointConfig{ID: "c", NS: ns, MAC: []byte{0, 0, 0, 0, 0, 0}}, "EndpointConfig.MAC"},
		{EndpointConfig{ID: "c", NS: ns, MTU: 70000}, "EndpointConfig.MTU"},
		{EndpointConfig{ID: "c", NS: ns, GatewayPriority: 20000}, "EndpointConfig.GatewayPriority"},
		{EndpointConfig{ID: "c", NS: ns, Addrs: []netip.Addr{{}}}, "EndpointConfig.Addrs"},
		{EndpointConfig{ID: "c", NS: ns, Addrs: []netip.Addr{a("172.29.0.1"), a("172.29.0.2")}}, "EndpointConfig.Addrs"},
	} {
		err := tc.ep.Validate()
		var ve *netns.ValidationError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.ep, err)
		case tc.field != "" && (!errors.As(err, &ve) || ve.Field != tc.field):
			t.Errorf("%+v: %v, want a ValidationError of %s", tc.ep, err, tc.field)
		}
	}
}

func TestCheckAddrs(t *testing.T) {
	subnets := []ipam.SubnetConfig{{Subnet: netip.MustParsePrefix("172.29.0.0/16"), Gateway: netip.MustParseAddr("172.29.0.254")}}
	for addr, ok := range map[string]bool{
		"172.29.0.81": true, "172.29.255.254": true,
		"172.30.0.1": false, "172.29.0.254": false, "172.29.0.0": false, "172.29.255.255": false,
	} {
		err := checkAddrs("f", []netip.Addr{netip.MustParseAddr(addr)}, subnets)
		if (err == nil) != ok {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

func TestErrors(t *testing.T) {
	if !errors.Is(ErrExists, os.ErrExist) || !errors.Is(ErrNotFound, os.ErrNotExist) || !errors.Is(ErrOverlap, ipam.ErrOverlap) {
		t.Error("sentinels do not match the os ones")
	}
}

func TestMarks(t *testing.T) {
	s, err := encodeMark(netMark{Kind: markerNet, Name: "n", Mode: ModeVEPA})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := decodeNetMark(s); !ok || m.Name != "n" || m.Mode != ModeVEPA {
		t.Errorf("net mark %q: %+v %v", s, m, ok)
	}
	if _, ok := decodeEPMark(s); ok {
		t.Errorf("a network mark read as an endpoint's")
	}
	if _, ok := decodeNetMark(`{"nsnet":"bridge","name":"n"}`); ok {
		t.Errorf("a bridge mark read as a macvlan network's")
	}
	if a, b := AnchorName("n"), AnchorName("m"); len(a) != 15 || a == b || !strings.HasPrefix(a, "mv-") {
		t.Errorf("AnchorName: %q %q", a, b)
	}
}
