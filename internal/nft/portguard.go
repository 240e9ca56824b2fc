package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nsnet/nsnet/netns"
)

// Port guards: a container may send from its own addresses only. The
// routed path has reverse-path filtering (rp_filter, rpfilter6), which
// cannot tell two members of one network apart: a container could forge a
// neighbour's address and have answers (DNS, anything) reflected at it.
// nsnet's bridge-family table checks, for every bridge port made for an
// endpoint, the source of IP and ARP against the endpoint's addresses:
//
//	table bridge nsnet {
//	  set ports  { type ifname }                 # the guarded ports
//	  set addrs4 { type ifname . ipv4_addr }     # port . its address
//	  set addrs6 { type ifname . ipv6_addr }
//	  chain prerouting { type filter hook prerouting priority -300
//	    iifname != @ports accept
//	    ether type { 8021q, 8021ad } drop        # no tagged detours
//	    ether type ip iifname . ip saddr @addrs4 accept
//	    ether type ip drop
//	    ether type ip6 ip6 saddr fe80::/10 accept      # link-local
//	    ether type ip6 ip6 saddr :: accept             # DAD
//	    ether type ip6 iifname . ip6 saddr @addrs6 accept
//	    ether type ip6 drop
//	    ether type arp arp hlen . plen != 6 . 4 drop
//	    ether type arp arp saddr ip 0.0.0.0 accept     # ARP probe
//	    ether type arp iifname . arp saddr ip @addrs4 accept
//	    ether type arp drop }
//	}
//
// Ports are GuardPort's and UnguardPort's (bridge Attach and Detach); the
// table exists while a port is guarded, and goes with the last one (or,
// for ports whose links are gone, with RemoveNetwork). It is a table of
// its own, so Reconcile and Ensure neither restore nor touch it.
type portSchema struct {
	table                 *nftables.Table
	prerouting            *nftables.Chain
	ports, addrs4, addrs6 *nftables.Set
}

func newPortSchema() *portSchema {
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
	concat := nftables.MustConcatSetType
	return &portSchema{
		table: t,
		prerouting: &nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: ptr(nftables.ChainPolicyAccept)},
		ports:  &nftables.Set{Table: t, ID: 1, Name: "ports", KeyType: nftables.TypeIFName},
		addrs4: &nftables.Set{Table: t, ID: 2, Name: "addrs4", KeyType: concat(nftables.TypeIFName, nftables.TypeIPAddr), Concatenation: true},
		addrs6: &nftables.Set{Table: t, ID: 3, Name: "addrs6", KeyType: concat(nftables.TypeIFName, nftables.TypeIP6Addr), Concatenation: true},
	}
}

func (ps *portSchema) sets() []*nftables.Set { return []*nftables.Set{ps.ports, ps.addrs4, ps.addrs6} }

func (ps *portSchema) rules() [][]expr.Any {
	etherType := func(t uint16) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(t >> 8), byte(t)}},
		}
	}
	iif := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1}
	lookup := func(s *nftables.Set) *expr.Lookup {
		return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID}
	}
	net := func(off, n uint32, reg uint32) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	}
	accept, drop := &expr.Verdict{Kind: expr.VerdictAccept}, &expr.Verdict{Kind: expr.VerdictDrop}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(e ...expr.Any) []expr.Any { return e }
	ip, ip6, arp := etherType(unix.ETH_P_IP), etherType(unix.ETH_P_IPV6), etherType(unix.ETH_P_ARP)
	return [][]expr.Any{
		{iif, &expr.Lookup{SourceRegister: reg1, SetName: ps.ports.Name, SetID: ps.ports.ID, Invert: true}, accept},
		cat(etherType(unix.ETH_P_8021Q), one(drop)),
		cat(etherType(unix.ETH_P_8021AD), one(drop)),
		cat(ip, one(iif, net(12, 4, reg32(4)), lookup(ps.addrs4), accept)),
		cat(ip, one(drop)),
		cat(ip6, one(net(8, 2, reg1),
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 2, Mask: []byte{0xff, 0xc0}, Xor: []byte{0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0xfe, 0x80}}, accept)),
		cat(ip6, one(net(8, 16, reg1), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: make([]byte, 16)}, accept)),
		cat(ip6, one(iif, net(8, 16, reg32(4)), lookup(ps.addrs6), accept)),
		cat(ip6, one(drop)),
		cat(arp, one(net(4, 2, reg1), &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{6, 4}}, drop)),
		cat(arp, one(net(14, 4, reg1), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: make([]byte, 4)}, accept)),
		cat(arp, one(iif, net(14, 4, reg32(4)), lookup(ps.addrs4), accept)),
		cat(arp, one(drop)),
	}
}

// skeleton adds to c's batch the table, its chain, sets and rules (the
// chain flushed first): on a table that exists it changes nothing but
// restores the rules.
func (ps *portSchema) skeleton(c *nftables.Conn) error {
	c.AddTable(ps.table)
	c.AddChain(ps.prerouting)
	for _, s := range ps.sets() {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	c.FlushChain(ps.prerouting)
	for _, r := range ps.rules() {
		c.AddRule(&nftables.Rule{Table: ps.table, Chain: ps.prerouting, Exprs: r, UserData: []byte("nsnet")})
	}
	return nil
}

// GuardPort lets IP and ARP into the bridge through port (the host end of
// an endpoint's veth) only from the addresses of addrs (and, for IPv6, link-local
// addresses and the unspecified one), replacing what port was let before.
// It creates nsnet's bridge table if needed, all in one transaction. Call
// it before the port is up, so that no packet passes unchecked.
func GuardPort(ctx context.Context, host *netns.NS, port string, addrs []netip.Prefix) error {
	if port == "" || len(port) > 15 {
		return &netns.ValidationError{Pkg: "nft", Field: "port", Value: port, Reason: "not an interface name"}
	}
	for _, a := range addrs {
		if !a.IsValid() {
			return &netns.ValidationError{Pkg: "nft", Field: "addrs", Value: a.String(), Reason: "not an address"}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		ps := newPortSchema()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyBridge); err == nil {
			if _, err := ps.deletePort(c, port); err != nil {
				return &netns.OpError{Op: "nft.guard-port", NS: host.String(), Name: port, Err: err}
			}
		} else if !errors.Is(err, unix.ENOENT) {
			return &netns.OpError{Op: "nft.guard-port", NS: host.String(), Name: port, Err: err}
		}
		if err := ps.skeleton(c); err != nil {
			return err
		}
		var v4, v6 []nftables.SetElement
		for _, p := range addrs {
			if a := p.Addr().Unmap(); a.Is4() {
				v4 = append(v4, nftables.SetElement{Key: append(ifname(port), a.AsSlice()...)})
			} else {
				v6 = append(v6, nftables.SetElement{Key: append(ifname(port), p.Addr().AsSlice()...)})
			}
		}
		errs := []error{c.SetAddElements(ps.ports, []nftables.SetElement{{Key: ifname(port)}})}
		if len(v4) > 0 {
			errs = append(errs, c.SetAddElements(ps.addrs4, v4))
		}
		if len(v6) > 0 {
			errs = append(errs, c.SetAddElements(ps.addrs6, v6))
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return flush(host, c, "nft.guard-port")
	})
}

// UnguardPort forgets port (its link gone or going); with the last port
// the bridge table goes too, in the same transaction. A port or table that
// is not there is no error.
func UnguardPort(ctx context.Context, host *netns.NS, port string) error {
	return changePorts(ctx, host, "nft.unguard-port", func(c *nftables.Conn, ps *portSchema, ports []string) (bool, error) {
		n, err := ps.deletePort(c, port)
		return n > 0, err
	}, func(p string) bool { return p == port })
}

// prunePorts forgets the ports that are no links of host (their endpoints'
// containers died, and nobody detached them); with the last port the
// bridge table goes too.
func prunePorts(ctx context.Context, host *netns.NS) error {
	links, err := host.Links()
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, l := range links {
		live[l.Attrs().Name] = true
	}
	return changePorts(ctx, host, "nft.prune-ports", func(c *nftables.Conn, ps *portSchema, ports []string) (bool, error) {
		dirty := false
		for _, p := range ports {
			if !live[p] {
				n, err := ps.deletePort(c, p)
				if err != nil {
					return false, err
				}
				dirty = dirty || n > 0
			}
		}
		return dirty, nil
	}, func(p string) bool { return !live[p] })
}

// changePorts runs fn on the bridge table's ports, if the table exists,
// and deletes the table instead when every port is one that gone says
// goes.
func changePorts(ctx context.Context, host *netns.NS, op string, fn func(*nftables.Conn, *portSchema, []string) (bool, error), gone func(string) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		ps := newPortSchema()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyBridge); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
		}
		elems, err := c.GetSetElements(ps.ports)
		if err != nil {
			return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
		}
		var ports []string
		left := false
		for _, e := range elems {
			p := string(bytes.TrimRight(e.Key, "\x00"))
			ports = append(ports, p)
			left = left || !gone(p)
		}
		if !left {
			c.DelTable(ps.table)
			if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
				return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
			}
			return nil
		}
		dirty, err := fn(c, ps, ports)
		if err != nil {
			return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
		}
		if !dirty {
			return nil
		}
		return flush(host, c, op)
	})
}

// deletePort batches the deletion of port's elements and returns how many.
func (ps *portSchema) deletePort(c *nftables.Conn, port string) (int, error) {
	total := 0
	for _, s := range ps.sets() {
		n, err := deleteElems(c, s, func(e nftables.SetElement) bool {
			if s == ps.ports {
				return bytes.Equal(e.Key, ifname(port))
			}
			return bytes.HasPrefix(e.Key, ifname(port))
		})
		if err != nil {
			return 0, fmt.Errorf("set %s: %w", s.Name, err)
		}
		total += n
	}
	return total, nil
}
