package macvlan

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/ipnet"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns"
)

func bad(field, value, reason string) error {
	return &netns.ValidationError{Pkg: "macvlan", Field: field, Value: value, Reason: reason}
}

// Validate reports what is wrong with c before anything is touched: the
// name, the parent's name, the mode, the MTU's range, the labels' size, and
// bad subnets by ipam's rules (a gateway or ip-range outside its subnet,
// host bits set, too small, overlapping each other), all as a
// *netns.ValidationError. What needs the host (the parent exists, is up,
// its MTU) is checked by New, still before anything is changed.
func (c Config) Validate() error {
	if r := names.Check(c.Name, 64); r != "" {
		return bad("Config.Name", c.Name, r)
	}
	if r := ifname.Check(c.Parent); r != "" {
		return bad("Config.Parent", c.Parent, r)
	}
	switch c.Mode {
	case "", ModeBridge, ModePrivate, ModeVEPA, ModePassthru:
	default:
		return bad("Config.Mode", string(c.Mode), "not bridge, private, vepa or passthru")
	}
	if err := (ipam.PoolConfig{Name: poolName(c.Name), Subnets: c.Subnets}).Validate(); err != nil {
		var ve *ipam.ValidationError
		if errors.As(err, &ve) {
			return bad(strings.Replace(ve.Field, "PoolConfig.", "Config.", 1), ve.Value, ve.Reason)
		}
		return err
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return bad("Config.MTU", strconv.Itoa(c.MTU), "not between 68 and 65535")
	}
	if _, err := encodeMark(c.mark()); err != nil {
		return bad("Config.Labels", fmt.Sprint(c.Labels), "too long to keep with the network: "+err.Error())
	}
	return nil
}

func (c Config) mode() Mode {
	if c.Mode == "" {
		return ModeBridge
	}
	return c.Mode
}

func (c Config) mark() netMark {
	return netMark{Kind: markerNet, Name: c.Name, Mode: c.mode(), Labels: c.Labels}
}

// poolName is the IPAM pool of a network.
func poolName(network string) string { return poolPrefix + network }

// endpointOwner is the IPAM owner of an endpoint's addresses.
func endpointOwner(network, id string) string { return network + "/" + id }

// shimOwner is the IPAM owner of the shim's address.
func shimOwner(network string) string { return network + "/" + shimSuffix }

// AnchorName returns the name of the anchor interface of the network called
// name: "mv-" and 12 hex digits of a hash of the name. As the host's shim,
// it is the interface the host reaches its containers by.
func AnchorName(name string) string {
	sum := sha256.Sum256([]byte("nsnet/macvlan/" + name))
	return anchorPrefix + hex.EncodeToString(sum[:])[:12]
}

// Validate reports what is wrong with c on its own, before anything is
// touched. What depends on the network (addresses in its subnets, MTU at
// most the parent's, no MAC in passthru mode) is checked by Attach, also
// before anything is changed.
func (c EndpointConfig) Validate() error {
	if len(c.ID) > 80 {
		return bad("EndpointConfig.ID", c.ID, "longer than 80 bytes")
	}
	if r := names.Check(c.ID, 64); r != "" {
		return bad("EndpointConfig.ID", c.ID, r)
	}
	if c.NS == nil {
		return bad("EndpointConfig.NS", "<nil>", "no container namespace")
	}
	if c.IfName != "" {
		if r := ifname.Check(c.IfName); r != "" {
			return bad("EndpointConfig.IfName", c.IfName, r)
		}
	}
	if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 != 0 || [6]byte(c.MAC) == [6]byte{}) {
		return bad("EndpointConfig.MAC", c.MAC.String(), "not a unicast Ethernet address")
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return bad("EndpointConfig.MTU", strconv.Itoa(c.MTU), "not between 68 and 65535")
	}
	if c.GatewayPriority < -baseMetric+1 || c.GatewayPriority > baseMetric {
		return bad("EndpointConfig.GatewayPriority", strconv.Itoa(c.GatewayPriority), fmt.Sprintf("not within ±%d", baseMetric-1))
	}
	var v4, v6 int
	for _, a := range c.Addrs {
		switch {
		case !a.IsValid():
			return bad("EndpointConfig.Addrs", a.String(), "not an address")
		case a.Is4() || a.Is4In6():
			v4++
		default:
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return bad("EndpointConfig.Addrs", fmt.Sprint(c.Addrs), "more than one address of a family")
	}
	return nil
}

// checkAddrs reports a static address that is not a host address of one of
// subnets (or is its gateway).
func checkAddrs(field string, addrs []netip.Addr, subnets []ipam.SubnetConfig) error {
	for _, a := range addrs {
		a = a.Unmap()
		var in *ipam.SubnetConfig
		for i := range subnets {
			if subnets[i].Subnet.Contains(a) {
				in = &subnets[i]
			}
		}
		if in == nil {
			var s []string
			for _, sn := range subnets {
				s = append(s, sn.Subnet.String())
			}
			return bad(field, a.String(), "outside the network's subnets "+strings.Join(s, ", "))
		}
		if a == in.Gateway {
			return bad(field, a.String(), "the network's gateway")
		}
		if a == in.Subnet.Masked().Addr() {
			return bad(field, a.String(), "the network address of "+in.Subnet.String())
		}
		if a.Is4() && in.Subnet.Bits() < 31 && a == ipnet.Last(in.Subnet) {
			return bad(field, a.String(), "the broadcast address of "+in.Subnet.String())
		}
	}
	return nil
}
