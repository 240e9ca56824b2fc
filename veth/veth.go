// Package veth creates and deletes veth pairs, the virtual cable between a
// container's namespace and its host.
//
// [Pair] creates both ends in one netlink request: the host end in the
// namespace it is given, the peer directly in the container's namespace
// under its final name (IFLA_NET_NS_FD), so that no temporary name can
// collide in the host and nothing needs to be moved or renamed. That is also
// the fast way: see Performance.
//
// # Namespaces
//
// Pair and Delete act in the namespace they are given (the "host"); the
// peer's namespace is Config.Peer.NS. Neither depends on the calling
// thread's namespace.
//
// # Privileges
//
// CAP_NET_ADMIN in both namespaces.
//
// # Idempotency
//
// Pair with names given finds a pair that already exists with those names
// and settings and returns it; if one of the names is taken by anything else
// it fails with an error matching os.ErrExist. Delete of a link that is gone
// succeeds.
//
// # Concurrency
//
// Pair and Delete are safe for concurrent use.
//
// # Performance
//
// Measured on the project's 2-core machine with
// `sudo go test -run '^$' -bench . -benchmem ./veth/` (median of 5 runs):
// see the README for the current figures of BenchmarkPair/peer-in-place and
// BenchmarkPair/create-then-move.
package veth

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/netns"
)

// End describes one end of a pair.
type End struct {
	// NS is the namespace the end is created in. For Config.Peer, nil means
	// the same namespace as the host end.
	NS *netns.NS
	// Name is the interface name, at most 15 bytes. Empty: generated,
	// "veth" followed by 7 hex digits, as Docker names its veths.
	Name string
	// MAC is the hardware address. Nil: a random locally administered one.
	MAC net.HardwareAddr
}

// Config says what pair to create. The zero Config is valid: a pair of
// generated names in one namespace, down, with the kernel's default MTU.
type Config struct {
	// Name and MAC of the host end (see End).
	Name string
	MAC  net.HardwareAddr
	// Peer is the other end; Peer.NS is typically a container.
	Peer End
	// MTU of both ends; 0 means the kernel default (1500).
	MTU int
	// Up sets both ends up.
	Up bool
	// Alias is written as the host end's interface alias (IFLA_IFALIAS),
	// the mark by which a later process finds the pair's owner. Empty: no
	// alias. The kernel ignores an alias in the request that creates the
	// pair: it is written by a second request.
	Alias string
	// Group is the host end's device group (IFLA_GROUP), set in the
	// request that creates the pair, so that the pair carries its owner's
	// mark from the moment it exists. Zero: the default group.
	Group uint32
}

// Link is one end of a pair as it exists in the kernel.
type Link struct {
	NS    *netns.NS
	Index int
	Name  string
	MAC   net.HardwareAddr
}

// Ends are the two ends of a pair: Host in the namespace Pair was given, Peer
// in Config.Peer.NS.
type Ends struct {
	Host, Peer Link
}

// Validate reports what is wrong with c before any kernel call is made: names
// that the kernel would refuse, an MTU out of range, MACs that are not
// unicast Ethernet addresses, two equal names in one namespace.
func (c Config) Validate() error {
	bad := func(field, value, reason string) error {
		return &netns.ValidationError{Pkg: "veth", Field: field, Value: value, Reason: reason}
	}
	if c.Name != "" {
		if r := ifname.Check(c.Name); r != "" {
			return bad("Config.Name", c.Name, r)
		}
	}
	if c.Peer.Name != "" {
		if r := ifname.Check(c.Peer.Name); r != "" {
			return bad("Config.Peer.Name", c.Peer.Name, r)
		}
	}
	if c.Name != "" && c.Name == c.Peer.Name && c.Peer.NS == nil {
		return bad("Config.Peer.Name", c.Peer.Name, "equals Config.Name in the same namespace")
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return bad("Config.MTU", fmt.Sprint(c.MTU), "not between 68 and 65535")
	}
	if r := checkMAC(c.MAC); r != "" {
		return bad("Config.MAC", c.MAC.String(), r)
	}
	if r := checkMAC(c.Peer.MAC); r != "" {
		return bad("Config.Peer.MAC", c.Peer.MAC.String(), r)
	}
	if len(c.Alias) > 255 {
		return bad("Config.Alias", c.Alias, "longer than 255 bytes")
	}
	return nil
}

func checkMAC(mac net.HardwareAddr) string {
	switch {
	case mac == nil:
		return ""
	case len(mac) != 6:
		return "not a 6-byte Ethernet address"
	case mac[0]&1 != 0:
		return "a multicast address"
	case bytes.Equal(mac, make(net.HardwareAddr, 6)):
		return "all zero"
	}
	return ""
}

// RandomMAC returns a random unicast, locally administered MAC address.
func RandomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	mac[0] = mac[0]&^1 | 2
	return mac
}
