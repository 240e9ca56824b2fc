// Package cniconf is what the nsnet-cni plugin and its node daemon share:
// the network configuration, its checks, and the requests between them.
package cniconf

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/internal/names"
	"github.com/nsnet/nsnet/ipam"
)

// DefaultStateDir is where the plugin keeps its state when the network
// configuration names none.
const DefaultStateDir = "/var/lib/nsnet-cni"

// Modes of a network.
const (
	ModeBridge  = "bridge"
	ModeMacvlan = "macvlan"
	ModeOverlay = "overlay"
)

// Plugin-specific error codes (the spec leaves 100 and up to plugins).
const (
	// ErrAddrInUse: a static address, a host port or a name is taken.
	ErrAddrInUse uint = 100
	// ErrExhausted: no free address is left.
	ErrExhausted uint = 101
	// ErrNetworkConflict: the network exists on the node with other
	// settings, or its subnet overlaps another network's.
	ErrNetworkConflict uint = 102
)

// Request is what the plugin sends the node daemon: one CNI call.
type Request struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string
	Stdin       []byte
	// PluginNS is the namespace the plugin runs in: the daemon must run in
	// the same, the node's.
	PluginNS string
}

// Response is the daemon's answer: a result to print, or a CNI error.
type Response struct {
	Result json.RawMessage `json:",omitempty"`
	Err    *types.Error    `json:",omitempty"`
}

// SockPath is the node daemon's socket in a state directory.
func SockPath(stateDir string) string { return filepath.Join(stateDir, "nsnet-cni.sock") }

// NetConf is the plugin's network configuration: what a conflist gives
// for a plugin of type "nsnet-cni".
type NetConf struct {
	types.PluginConf

	// Mode is "bridge" (the default), "macvlan" or "overlay".
	Mode string `json:"mode,omitempty"`
	// StateDir holds the node's state: the IPAM file store, the
	// attachments, the node daemon's socket. "": DefaultStateDir.
	StateDir string `json:"stateDir,omitempty"`

	// Subnets of the network. Empty: bridge and macvlan networks take the
	// next free subnet of the IPAM's default pools; an overlay needs one.
	Subnets []SubnetConf `json:"subnets,omitempty"`
	// MTU of the containers' interfaces; 0: the network's default.
	MTU int `json:"mtu,omitempty"`
	// Internal networks have no egress (no masquerade, nothing forwarded
	// beyond the bridge, no DNS forwarding).
	Internal bool `json:"internal,omitempty"`

	// Bridge mode: the bridge's name ("": br- and 12 hex digits) and
	// whether the network's containers may talk to each other (default
	// true).
	Bridge string `json:"bridge,omitempty"`
	ICC    *bool  `json:"icc,omitempty"`

	// Macvlan mode: the parent interface and the macvlan mode.
	Parent      string `json:"parent,omitempty"`
	MacvlanMode string `json:"macvlanMode,omitempty"`

	// Overlay mode: the VNI, this node's name ("": the host name) and
	// its underlay address ("": the address of the host's default-route
	// interface).
	VNI      uint32 `json:"vni,omitempty"`
	NodeName string `json:"nodeName,omitempty"`
	VTEP     string `json:"vtep,omitempty"`

	// Store is where addresses (and an overlay's control plane) live:
	// "file" (the default; under StateDir, one node) or "etcd" (shared by
	// the nodes; required for an overlay across machines).
	Store string    `json:"store,omitempty"`
	Etcd  *EtcdConf `json:"etcd,omitempty"`

	// DNSServer serves the network's names (the containers' names and
	// aliases) from nsnet's DNS server: on the gateway address of a bridge
	// network, on 127.0.0.11 inside an overlay's containers. The result's
	// dns names it as the nameserver.
	DNSServer bool `json:"dnsServer,omitempty"`
	// DNSUpstreams are where other names are forwarded: "addr:port"
	// entries; absent: the host's /etc/resolv.conf; empty: nowhere.
	DNSUpstreams *[]string `json:"dnsUpstreams,omitempty"`
	// Domain of the names ("": nsnet.internal).
	Domain string `json:"domain,omitempty"`

	RuntimeConfig RuntimeConf `json:"runtimeConfig,omitempty"`
	Args          *struct {
		CNI struct {
			IPs []string `json:"ips,omitempty"`
			MAC string   `json:"mac,omitempty"`
		} `json:"cni"`
	} `json:"args,omitempty"`

	// Filled in by Parse: the subnets, and the previous plugin's result
	// (prevResult) when there is one.
	IPAMSubnets []ipam.SubnetConfig `json:"-"`
	Prev        *current.Result     `json:"-"`
}

// SubnetConf is one subnet of a network.
type SubnetConf struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway,omitempty"`
	IPRange string `json:"ipRange,omitempty"`
}

// EtcdConf says how to reach etcd.
type EtcdConf struct {
	Endpoints []string `json:"endpoints"`
	// Prefix of the keys; "": "/nsnet/".
	Prefix string `json:"prefix,omitempty"`
}

// RuntimeConf is what the runtime passes for the capabilities the
// configuration declares.
type RuntimeConf struct {
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	DNS          *RuntimeDNS   `json:"dns,omitempty"`
	Aliases      []string      `json:"aliases,omitempty"`
	IPs          []string      `json:"ips,omitempty"`
	MAC          string        `json:"mac,omitempty"`
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// RuntimeDNS is the dns capability: the runtime's wishes for the
// container's resolver.
type RuntimeDNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// ConfError is a configuration the plugin cannot take.
func ConfError(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// Parse decodes and checks a network configuration, before anything
// is touched. withPrev parses prevResult (ADD, CHECK, DEL).
func Parse(stdin []byte) (*NetConf, *types.Error) {
	c := &NetConf{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "nsnet-cni: network configuration: "+err.Error(), "")
	}
	if c.Mode == "" {
		c.Mode = ModeBridge
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(c.StateDir) {
		return nil, ConfError("nsnet-cni: stateDir %q: not an absolute path", c.StateDir)
	}
	// The daemon's socket lives there: a unix socket path has 108 bytes.
	if len(SockPath(c.StateDir)) > 100 {
		return nil, ConfError("nsnet-cni: stateDir %q: too long for the daemon's socket (at most %d bytes)", c.StateDir, 100-len("/nsnet-cni.sock"))
	}
	if r := names.Check(c.Name, 64); r != "" {
		return nil, ConfError("nsnet-cni: name %q: %s", c.Name, r)
	}
	switch c.Store {
	case "", "file":
		c.Store = "file"
	case "etcd":
		if c.Etcd == nil || len(c.Etcd.Endpoints) == 0 {
			return nil, ConfError("nsnet-cni: store \"etcd\" needs etcd.endpoints")
		}
	default:
		return nil, ConfError("nsnet-cni: store %q: not \"file\" or \"etcd\"", c.Store)
	}
	for i, s := range c.Subnets {
		sc, err := s.parse()
		if err != nil {
			return nil, ConfError("nsnet-cni: subnets[%d]: %v", i, err)
		}
		c.IPAMSubnets = append(c.IPAMSubnets, sc)
	}
	if len(c.IPAMSubnets) > 0 {
		if err := (ipam.PoolConfig{Name: "check", Subnets: c.IPAMSubnets}).Validate(); err != nil {
			return nil, ConfError("nsnet-cni: subnets: %v", err)
		}
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, ConfError("nsnet-cni: mtu %d: not between 68 and 65535", c.MTU)
	}
	switch c.Mode {
	case ModeBridge:
		if c.Bridge != "" {
			if r := ifname.Check(c.Bridge); r != "" {
				return nil, ConfError("nsnet-cni: bridge %q: %s", c.Bridge, r)
			}
		}
	case ModeMacvlan:
		if c.Parent == "" {
			return nil, ConfError("nsnet-cni: mode macvlan needs a parent interface")
		}
		if r := ifname.Check(c.Parent); r != "" {
			return nil, ConfError("nsnet-cni: parent %q: %s", c.Parent, r)
		}
		switch c.MacvlanMode {
		case "", "bridge", "private", "vepa":
		default:
			return nil, ConfError("nsnet-cni: macvlanMode %q: not bridge, private or vepa", c.MacvlanMode)
		}
		if c.DNSServer {
			return nil, ConfError("nsnet-cni: dnsServer: not available in mode macvlan (the host cannot reach macvlan containers)")
		}
	case ModeOverlay:
		if c.VNI == 0 || c.VNI > 1<<24-1 {
			return nil, ConfError("nsnet-cni: mode overlay needs a vni between 1 and %d", 1<<24-1)
		}
		if len(c.IPAMSubnets) == 0 {
			return nil, ConfError("nsnet-cni: mode overlay needs subnets (the same on every node)")
		}
		if c.VTEP != "" {
			if _, err := netip.ParseAddr(c.VTEP); err != nil {
				return nil, ConfError("nsnet-cni: vtep %q: not an address", c.VTEP)
			}
		}
		if c.NodeName != "" {
			if r := names.Check(c.NodeName, 64); r != "" {
				return nil, ConfError("nsnet-cni: nodeName %q: %s", c.NodeName, r)
			}
		}
	default:
		return nil, ConfError("nsnet-cni: mode %q: not bridge, macvlan or overlay", c.Mode)
	}
	if c.DNSUpstreams != nil {
		for _, u := range *c.DNSUpstreams {
			if _, err := netip.ParseAddrPort(u); err != nil {
				return nil, ConfError("nsnet-cni: dnsUpstreams: %q: not address:port", u)
			}
		}
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "nsnet-cni: prevResult: "+err.Error(), "")
		}
		res, err := current.NewResultFromResult(c.PrevResult)
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "nsnet-cni: prevResult: "+err.Error(), "")
		}
		c.Prev = res
	}
	return c, nil
}

func (s SubnetConf) parse() (ipam.SubnetConfig, error) {
	var sc ipam.SubnetConfig
	var err error
	if sc.Subnet, err = netip.ParsePrefix(s.Subnet); err != nil {
		return sc, fmt.Errorf("subnet %q: %v", s.Subnet, err)
	}
	if s.Gateway != "" {
		if sc.Gateway, err = netip.ParseAddr(s.Gateway); err != nil {
			return sc, fmt.Errorf("gateway %q: %v", s.Gateway, err)
		}
	}
	if s.IPRange != "" {
		if sc.IPRange, err = netip.ParsePrefix(s.IPRange); err != nil {
			return sc, fmt.Errorf("ipRange %q: %v", s.IPRange, err)
		}
	}
	return sc, nil
}

// AttachReq is what one ADD asks for, from the configuration, the
// runtime's capabilities and CNI_ARGS.
type AttachReq struct {
	IPs     []netip.Addr
	MAC     net.HardwareAddr
	Ports   []PortMapping
	Names   []string // the container's name (K8S_POD_NAME) first, then aliases
	DNSOpts *RuntimeDNS
}

// ParseAttach reads the per-container arguments; bad ones are CNI errors
// naming the argument.
func ParseAttach(c *NetConf, cniArgs string) (AttachReq, *types.Error) {
	var a AttachReq
	ips := c.RuntimeConfig.IPs
	mac := c.RuntimeConfig.MAC
	if c.Args != nil {
		ips = append(ips, c.Args.CNI.IPs...)
		if mac == "" {
			mac = c.Args.CNI.MAC
		}
	}
	var podName string
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "IP":
			if len(ips) == 0 { // args take precedence over CNI_ARGS
				ips = strings.Split(v, ",")
			}
		case "MAC":
			if mac == "" {
				mac = v
			}
		case "K8S_POD_NAME":
			podName = v
		}
	}
	for _, s := range ips {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		addr, err := netip.ParseAddr(s)
		if err != nil {
			p, perr := netip.ParsePrefix(s)
			if perr != nil {
				return a, ConfError("nsnet-cni: ips: %q is not an address", s)
			}
			addr = p.Addr()
		}
		a.IPs = append(a.IPs, addr.Unmap())
	}
	if len(a.IPs) > 0 && c.Mode == ModeOverlay {
		return a, types.NewError(types.ErrUnsupportedField, "nsnet-cni: ips: static addresses are not available in mode overlay (addresses are the cluster's)", "")
	}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return a, ConfError("nsnet-cni: mac %q: not a unicast Ethernet address", mac)
		}
		a.MAC = hw
	}
	for i, p := range c.RuntimeConfig.PortMappings {
		if c.Mode != ModeBridge {
			return a, types.NewError(types.ErrUnsupportedField, "nsnet-cni: portMappings: only in mode bridge", "")
		}
		if p.HostPort < 0 || p.HostPort > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return a, ConfError("nsnet-cni: portMappings[%d]: ports %d:%d out of range", i, p.HostPort, p.ContainerPort)
		}
		switch strings.ToLower(p.Protocol) {
		case "", "tcp", "udp", "sctp":
		default:
			return a, ConfError("nsnet-cni: portMappings[%d]: protocol %q: not tcp, udp or sctp", i, p.Protocol)
		}
		if p.HostIP != "" {
			if _, err := netip.ParseAddr(p.HostIP); err != nil {
				return a, ConfError("nsnet-cni: portMappings[%d]: hostIP %q: not an address", i, p.HostIP)
			}
		}
		a.Ports = append(a.Ports, p)
	}
	seen := map[string]bool{}
	for _, n := range append([]string{podName}, c.RuntimeConfig.Aliases...) {
		if n == "" || seen[strings.ToLower(n)] {
			continue
		}
		if !ValidLabel(n) {
			if n == podName {
				continue // a pod name is no DNS label: serve the aliases only
			}
			return a, ConfError("nsnet-cni: aliases: %q is not a DNS label", n)
		}
		seen[strings.ToLower(n)] = true
		a.Names = append(a.Names, n)
	}
	a.DNSOpts = c.RuntimeConfig.DNS
	return a, nil
}

// ValidLabel: 1 to 63 letters, digits and '-', not starting or ending
// with '-' (what dnsd serves as a name).
func ValidLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
