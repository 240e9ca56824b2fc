package portmap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/internal/errs"
	"github.com/nsnet/nsnet/netns"
)

// Mapping is one published port or range of ports.
type Mapping struct {
	// Proto is "tcp" (the default, ""), "udp" or "sctp".
	Proto string
	// HostAddr is the host address the mapping is on (`-p
	// 127.0.0.1:8080:80`); the zero Addr means every address of the host of
	// CtrAddr's family. It must be an address of the host.
	HostAddr netip.Addr
	// HostPort is the host port, or the first of a range that ends at
	// HostPortEnd; 0 asks for an ephemeral port (`-P`), which Add returns.
	HostPort, HostPortEnd int
	// CtrAddr and CtrPort (to CtrPortEnd) are the container's address and
	// port or range, of the same length as the host's.
	CtrAddr             netip.Addr
	CtrPort, CtrPortEnd int
	// ID names the mapping's owner (a container ID, say); List returns it.
	// At most 128 bytes.
	ID string
}

// String renders m like docker port: "tcp 127.0.0.1:8080 -> 172.17.0.2:80".
func (m Mapping) String() string {
	host := "*"
	if m.HostAddr.IsValid() {
		host = m.HostAddr.String()
	}
	ports := func(a, b int) string {
		if b > a {
			return fmt.Sprintf("%d-%d", a, b)
		}
		return strconv.Itoa(a)
	}
	return fmt.Sprintf("%s %s -> %s (%s)", m.proto(),
		net.JoinHostPort(host, ports(m.HostPort, m.HostPortEnd)),
		net.JoinHostPort(m.CtrAddr.String(), ports(m.CtrPort, m.CtrPortEnd)), m.ID)
}

func (m Mapping) proto() string {
	if m.Proto == "" {
		return "tcp"
	}
	return m.Proto
}

// protos are the IP protocol numbers (IANA: the same on every system).
var protos = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

// length is the number of ports of m (1 for a single port).
func (m Mapping) length() int {
	if m.HostPortEnd == 0 {
		return 1
	}
	return m.HostPortEnd - m.HostPort + 1
}

// Errors.
var (
	// ErrConflict: the host port is published already, for the same
	// protocol on the same or an overlapping host address. It matches
	// netns.ErrExists.
	ErrConflict = fmt.Errorf("portmap: port already published: %w", netns.ErrExists)
	// ErrPortInUse: a program of the host holds the port. It matches
	// nsnet.ErrInUse.
	ErrPortInUse = errs.New("portmap: port in use on the host", nsnet.ErrInUse)
	// ErrNotFound, ErrExists and ErrInUse are the module-wide sentinels
	// (os.ErrNotExist, os.ErrExist, nsnet.ErrInUse) that every nsnet
	// package has; ErrConflict and ErrPortInUse match the last two.
	ErrNotFound = os.ErrNotExist
	ErrExists   = os.ErrExist
	ErrInUse    = nsnet.ErrInUse
	// ErrExhausted: no ephemeral port is free.
	ErrExhausted = errors.New("portmap: no free ephemeral port")
)

// ValidationError is bad input, refused before the table is touched:
// nsnet.ValidationError, the one type every nsnet package returns for it.
type ValidationError = nsnet.ValidationError

func invalid(field string, value any, reason string) *ValidationError {
	return errs.Invalid("portmap", field, value, reason)
}

// Validate checks m without touching the kernel (but for whether the host
// has HostAddr, which Add checks).
func (m Mapping) Validate() error {
	bad := func(f string, v any, format string, args ...any) error {
		return invalid(f, v, fmt.Sprintf(format, args...))
	}
	if _, ok := protos[m.proto()]; !ok {
		return bad("Proto", m.Proto, "not tcp, udp or sctp")
	}
	if !m.CtrAddr.IsValid() || m.CtrAddr.Zone() != "" || m.CtrAddr.Is4In6() || m.CtrAddr.IsUnspecified() || m.CtrAddr.IsMulticast() {
		return bad("CtrAddr", m.CtrAddr, "not a unicast IPv4 or IPv6 address")
	}
	if m.HostAddr.IsValid() {
		switch {
		case m.HostAddr.Is4In6() || m.HostAddr.Zone() != "" || m.HostAddr.IsUnspecified() || m.HostAddr.IsMulticast():
			return bad("HostAddr", m.HostAddr, "not a unicast address (leave it unset for every address)")
		case m.HostAddr.Is4() != m.CtrAddr.Is4():
			return bad("HostAddr", m.HostAddr, "not of the family of the container address %s", m.CtrAddr)
		case m.HostAddr == netip.IPv6Loopback():
			return bad("HostAddr", m.HostAddr, "the kernel cannot forward from ::1")
		}
	}
	for _, p := range []struct {
		f string
		v int
	}{{"HostPort", m.HostPort}, {"HostPortEnd", m.HostPortEnd}, {"CtrPort", m.CtrPort}, {"CtrPortEnd", m.CtrPortEnd}} {
		if p.v < 0 || p.v > 65535 {
			return bad(p.f, p.v, "not a port (0 to 65535)")
		}
	}
	if m.CtrPort == 0 {
		return bad("CtrPort", 0, "port 0 is not a container port")
	}
	if m.HostPortEnd != 0 && m.HostPortEnd < m.HostPort || m.CtrPortEnd != 0 && m.CtrPortEnd < m.CtrPort {
		return bad("HostPortEnd", m.HostPortEnd, "a range ends before it starts")
	}
	hostLen, ctrLen := m.length(), 1
	if m.CtrPortEnd != 0 {
		ctrLen = m.CtrPortEnd - m.CtrPort + 1
	}
	if hostLen != ctrLen {
		return bad("CtrPortEnd", m.CtrPortEnd, "the container range has %d ports, the host range %d", ctrLen, hostLen)
	}
	if m.HostPort == 0 && m.HostPortEnd != 0 {
		return bad("HostPort", 0, "an ephemeral port is one port, not a range")
	}
	if len(m.ID) > 128 || strings.ContainsRune(m.ID, 0) {
		return bad("ID", m.ID, "over 128 bytes or with a NUL")
	}
	return nil
}

// Config configures a Mapper.
type Config struct {
	// EphemeralPorts is the range ephemeral host ports come from, first
	// and last, within 1 to 65535; zero: 32768 to 60999 (Linux's default
	// ip_local_port_range, which Docker uses).
	EphemeralPorts [2]int
}

// Validate checks c without touching the kernel.
func (c Config) Validate() error {
	if r := c.EphemeralPorts; r != [2]int{} && (r[0] < 1 || r[1] > 65535 || r[0] > r[1]) {
		return invalid("EphemeralPorts", r, "not a range of ports within 1 to 65535, first to last")
	}
	return nil
}

// BatchError names the mapping of a batch (AddAll, RemoveAll) that failed
// it: its index in the batch, the mapping, and the error.
type BatchError struct {
	Index   int
	Mapping Mapping
	Err     error
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("portmap: mapping %d of the batch (%s): %v", e.Index, e.Mapping, e.Err)
}

func (e *BatchError) Unwrap() error { return e.Err }

// State is everything nsnet keeps in a host's nftables table, as the
// caller holds it: its bridge networks (their isolation), the networks it
// masquerades, and the mappings it published. The types are portmap's own,
// so that portmap does not pull in the bridge and nat packages; a bridge
// network's Config and a nat.Network carry the same fields.
type State struct {
	// Networks are the bridge networks of the host.
	Networks []Network
	// Masquerade are the networks given to nat.Masquerade.
	Masquerade []Masquerade
	// Mappings are the mappings Mapper.Add returned.
	Mappings []Mapping
}

// Network is what the isolation rules need to know of a bridge network
// (bridge.Network.Config has these fields).
type Network struct {
	// Bridge is the network's bridge in the host namespace.
	Bridge  string
	Subnets []netip.Prefix
	// Internal networks have no egress.
	Internal bool
	// DisableICC drops traffic between the network's containers.
	DisableICC bool
}

// Masquerade is a masqueraded network, as given to nat.Masquerade.
type Masquerade struct {
	Bridge  string
	Subnets []netip.Prefix
}
