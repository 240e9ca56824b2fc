package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/names"
)

// PoolConfig describes a pool, like the flags of `docker network create`.
// The zero value of every field but Name is useful: no Subnets means one
// IPv4 subnet chosen from the allocator's default pools.
type PoolConfig struct {
	// Name names the pool: 1 to 128 bytes of letters, digits, '_', '.',
	// '-', starting with a letter or digit.
	Name string

	// Subnets are the pool's subnets, IPv4 and IPv6 in any mix (dual stack:
	// an owner gets one address of each family). Empty: the allocator picks
	// one IPv4 subnet from its default pools, like `docker network create
	// mynet` without --subnet.
	Subnets []SubnetConfig

	// Avoid, if not nil, gives routes that an auto-selected subnet must not
	// overlap, for example the routes of the host's namespace (*netns.NS
	// implements it). AvoidPrefixes are more prefixes to avoid. Both only
	// guide auto-selection and are not stored with the pool; default routes
	// are ignored.
	Avoid         RouteSource
	AvoidPrefixes []netip.Prefix
}

// SubnetConfig is one subnet of a pool: `--subnet`, `--gateway`,
// `--ip-range` and `--aux-address` of `docker network create`.
type SubnetConfig struct {
	// Subnet is the network, such as 172.21.0.0/16 or fd00:1::/64; it must
	// be its own network address (no host bits) and hold at least one
	// address besides the gateway: IPv4 /30 or shorter, IPv6 /126.
	Subnet netip.Prefix
	// Gateway is the subnet's gateway, never handed out. Zero: the first
	// host address (172.21.0.1). Any host address of the subnet may be
	// given (172.21.0.254).
	Gateway netip.Addr
	// IPRange, if set, is the part of Subnet dynamic allocation takes
	// addresses from: every address in it that is a host address of the
	// subnet and not the gateway (172.21.100.0 in 172.21.100.0/24 of
	// 172.21.0.0/16). Static addresses may lie anywhere in Subnet.
	IPRange netip.Prefix
	// Reserved addresses of the subnet are never handed out (Docker's
	// --aux-address).
	Reserved []netip.Addr
}

// RouteSource gives the prefixes of routes that an auto-selected subnet must
// not overlap. *netns.NS implements it with the routes of its namespace; ipam
// itself never touches the kernel.
type RouteSource interface {
	RoutePrefixes(ctx context.Context) ([]netip.Prefix, error)
}

// DefaultPool is a range that auto-selection carves subnets out of: Base
// split into subnets of prefix length Size, tried in order.
type DefaultPool struct {
	Base netip.Prefix
	Size int
}

// DockerDefaultPools are the default pools of Docker, which an Allocator uses
// when its Config has none: 172.17.0.0/16 to 172.31.0.0/16 as /16s, then
// 192.168.0.0/16 as /20s.
func DockerDefaultPools() []DefaultPool {
	var p []DefaultPool
	for i := 17; i <= 31; i++ {
		p = append(p, DefaultPool{Base: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(i), 0, 0}), 16), Size: 16})
	}
	return append(p, DefaultPool{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20})
}

// Validate checks c without looking at any state: the name, each subnet, its
// gateway, ip-range and reserved addresses, and that the pool's subnets do
// not overlap each other. It returns a *ValidationError.
func (c PoolConfig) Validate() error {
	if err := validName(c.Name); err != nil {
		return err
	}
	for i, sc := range c.Subnets {
		if _, err := sc.normalize(fmt.Sprintf("PoolConfig.Subnets[%d]", i)); err != nil {
			return err
		}
		for j := range i {
			if o := c.Subnets[j].Subnet; o.Overlaps(sc.Subnet) {
				return &ValidationError{Pkg: "ipam",
					Field:  fmt.Sprintf("PoolConfig.Subnets[%d].Subnet", i),
					Value:  sc.Subnet.String(),
					Reason: fmt.Sprintf("overlaps %s, subnet %d of the pool", o, j),
					Err:    ErrOverlap,
				}
			}
		}
	}
	for i, p := range c.AvoidPrefixes {
		if !p.IsValid() {
			return invalid(fmt.Sprintf("PoolConfig.AvoidPrefixes[%d]", i), p, "not a valid prefix")
		}
	}
	return nil
}

func validName(name string) error {
	if r := names.Check(name, 128); r != "" {
		return invalid("PoolConfig.Name", name, "%s", r)
	}
	return nil
}

// normalize checks sc and returns it with the gateway filled in.
func (sc SubnetConfig) normalize(field string) (SubnetConfig, error) {
	p := sc.Subnet
	if !p.IsValid() {
		return sc, invalid(field+".Subnet", p, "not a valid prefix")
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return sc, invalid(field+".Subnet", p, "must be a plain IPv4 or IPv6 prefix")
	}
	if p.Masked() != p {
		return sc, invalid(field+".Subnet", p, "has host bits set (the network is %s)", p.Masked())
	}
	if hostBits(p) < 2 {
		return sc, invalid(field+".Subnet", p, "too small to hold a host besides the gateway")
	}
	for _, sp := range specialPurpose {
		if sp.prefix.Overlaps(p) {
			return sc, invalid(field+".Subnet", p, "overlaps %s, %s", sp.prefix, sp.what)
		}
	}
	n := newSubnet(SubnetConfig{Subnet: p})
	if !sc.Gateway.IsValid() {
		sc.Gateway = n.first
	} else if err := n.checkHost(sc.Gateway); err != "" {
		return sc, invalid(field+".Gateway", sc.Gateway, "%s", err)
	}
	if sc.IPRange.IsValid() {
		r := sc.IPRange
		switch {
		case r.Masked() != r:
			return sc, invalid(field+".IPRange", r, "has host bits set (the range is %s)", r.Masked())
		case r.Addr().Is4() != p.Addr().Is4() || r.Bits() < p.Bits() || !p.Contains(r.Addr()):
			return sc, invalid(field+".IPRange", r, "not inside subnet %s", p)
		}
	} else if sc.IPRange != (netip.Prefix{}) {
		return sc, invalid(field+".IPRange", sc.IPRange, "not a valid prefix")
	}
	for i, a := range sc.Reserved {
		f := fmt.Sprintf("%s.Reserved[%d]", field, i)
		if err := n.checkHost(a); err != "" {
			return sc, invalid(f, a, "%s", err)
		}
		if a == sc.Gateway {
			return sc, invalid(f, a, "is the gateway")
		}
	}
	sc.Reserved = slices.Clone(sc.Reserved)
	slices.SortFunc(sc.Reserved, netip.Addr.Compare)
	sc.Reserved = slices.Compact(sc.Reserved)
	n = newSubnet(sc)
	if n.capacity == 0 {
		return sc, invalid(field, sc.Subnet, "no address left to hand out (gateway, reserved addresses and ip-range leave none)")
	}
	return sc, nil
}

// specialPurpose are the ranges no container network may take: the kernel
// or the protocols give them another meaning (RFC 6890).
var specialPurpose = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\""},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (and broadcast)"},
	{netip.MustParsePrefix("::/8"), "loopback, unspecified and IPv4-mapped"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// equal reports whether two normalized subnet configs are the same.
func (sc SubnetConfig) equal(o SubnetConfig) bool {
	return sc.Subnet == o.Subnet && sc.Gateway == o.Gateway && sc.IPRange == o.IPRange && slices.Equal(sc.Reserved, o.Reserved)
}

func hostBits(p netip.Prefix) int { return p.Addr().BitLen() - p.Bits() }
