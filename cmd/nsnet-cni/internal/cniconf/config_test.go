package cniconf

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n1","type":"nsnet-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeBridge || c.StateDir != DefaultStateDir || c.Store != "file" || len(c.IPAMSubnets) != 0 {
		t.Errorf("defaults: mode %q stateDir %q store %q subnets %v", c.Mode, c.StateDir, c.Store, c.IPAMSubnets)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ conf, code, msg string }{
		{`{`, "6", "network configuration"},
		{`{"name":""}`, "7", "name"},
		{`{"name":"n","stateDir":"/` + strings.Repeat("x", 100) + `"}`, "7", "too long"},
		{`{"name":"n","mode":"overlay","vni":16777216,"subnets":[{"subnet":"10.0.0.0/24"}]}`, "7", "vni"},
		{`{"name":"n","mode":"overlay","vni":1,"subnets":[{"subnet":"10.0.0.0/24"}],"vtep":"x"}`, "7", "vtep"},
		{`{"name":"n","mode":"macvlan","parent":"eth0","dnsServer":true}`, "7", "dnsServer"},
		{`{"name":"n","mode":"macvlan","parent":"eth0","macvlanMode":"passthru"}`, "7", "macvlanMode"},
		{`{"name":"n","bridge":"a-name-far-too-long"}`, "7", "bridge"},
		{`{"name":"n","mtu":20}`, "7", "mtu"},
		{`{"name":"n","dnsUpstreams":["1.2.3.4"]}`, "7", "dnsUpstreams"},
		{`{"name":"n","subnets":[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/16"}]}`, "7", "subnets"},
		{`{"name":"n","cniVersion":"1.1.0","prevResult":{"cniVersion":"1.1.0","ips":"x"}}`, "6", "prevResult"},
	} {
		_, err := Parse([]byte(tc.conf))
		if err == nil {
			t.Errorf("%s: no error", tc.conf)
			continue
		}
		if got := strconv.Itoa(int(err.Code)); got != tc.code || !strings.Contains(err.Msg, tc.msg) {
			t.Errorf("%s: %d %q, want code %s naming %q", tc.conf, err.Code, err.Msg, tc.code, tc.msg)
		}
	}
}

func TestParseAttach(t *testing.T) {
	c, cerr := Parse([]byte(`{"name":"n","runtimeConfig":{"ips":["10.1.0.5/24"],"aliases":["web","WEB","www"]},
		"args":{"cni":{"ips":["fd00::5"]}}}`))
	if cerr != nil {
		t.Fatal(cerr)
	}
	a, err := ParseAttach(c, "IgnoreUnknown=1;IP=10.9.9.9;K8S_POD_NAME=my-pod")
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")}; !slices.Equal(a.IPs, want) {
		t.Errorf("ips %v, want %v (args over CNI_ARGS)", a.IPs, want)
	}
	if want := []string{"my-pod", "web", "www"}; !slices.Equal(a.Names, want) {
		t.Errorf("names %v, want %v", a.Names, want)
	}
	// A pod name that is no DNS label is left out, not an error.
	a, err = ParseAttach(c, "K8S_POD_NAME=a.b")
	if err != nil || a.Names[0] != "web" {
		t.Errorf("pod name a.b: %v %v", a.Names, err)
	}
	c2, _ := Parse([]byte(`{"name":"n"}`))
	if a, err := ParseAttach(c2, "IP=10.2.0.7,10.2.0.8;MAC=02:00:00:00:00:07"); err != nil || len(a.IPs) != 2 || a.MAC.String() != "02:00:00:00:00:07" {
		t.Errorf("CNI_ARGS IP and MAC: %+v %v", a, err)
	}
}
