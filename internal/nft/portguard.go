//go:build linux

package nft

import (
	"bytes"
	"context"
	"errors"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsnet/nsnet/netns"
)

// Port guards: a container may send from its own addresses only. The
// routed path has reverse-path filtering (rp_filter, rpfilter6), which
// cannot tell two members of one network apart: a container could forge a
// neighbour's address and have answers (DNS, anything) reflected at it.
// nsnet's bridge-family table checks, for every bridge port made for an
// endpoint, the source of IP and ARP against the endpoint's addresses.
// Ports are keyed by interface index, which the kernel does not hand out
// again soon (it allocates indexes cyclically), so that the elements of a
// port whose link is gone can match no other port:
//
//	table bridge nsnet {
//	  set ports  { type iface_index }                # the guarded ports
//	  set addrs4 { type iface_index . ipv4_addr }    # port . its address
//	  set addrs6 { type iface_index . ipv6_addr }
//	  chain prerouting { type filter hook prerouting priority -300
//	    iif != @ports accept
//	    ether type { 8021q, 8021ad } drop            # no tagged detours
//	    ether type ip iif . ip saddr @addrs4 accept
//	    ether type ip drop
//	    ether type ip6 ip6 saddr fe80::/10 accept    # link-local
//	    ether type ip6 ip6 saddr :: accept           # DAD
//	    ether type ip6 iif . ip6 saddr @addrs6 accept
//	    ether type ip6 drop
//	    ether type arp arp hlen . plen != 6 . 4 drop
//	    ether type arp arp saddr ip 0.0.0.0 accept   # ARP probe
//	    ether type arp iif . arp saddr ip @addrs4 accept
//	    ether type arp drop }
//	}
//
// Per-port data lives in set elements only: GuardPort (bridge Attach)
// adds elements and reads nothing, so its cost does not grow with the
// number of ports (a chain per port behind a verdict map doubled an
// attach's time at 500 ports: the kernel checks every chain for loops on
// each commit with a jump). UnguardPort (bridge Detach) reads the sets to
// find the port's elements. RemoveNetwork forgets the ports whose links
// are gone (containers that died and were never detached) and deletes the
// table once no guarded port is left. It is a table of its own: Ensure and
// Reconcile of the inet table neither touch nor restore it.
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
		ports:  &nftables.Set{Table: t, ID: 1, Name: "ports", KeyType: nftables.TypeIFIndex},
		addrs4: &nftables.Set{Table: t, ID: 2, Name: "addrs4", KeyType: concat(nftables.TypeIFIndex, nftables.TypeIPAddr), Concatenation: true},
		addrs6: &nftables.Set{Table: t, ID: 3, Name: "addrs6", KeyType: concat(nftables.TypeIFIndex, nftables.TypeIP6Addr), Concatenation: true},
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
	net := func(off, n, reg uint32) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	}
	// iif . address, looked up in s: the index in the first 32-bit
	// register, the address after it.
	portAddr := func(off, n uint32, s *nftables.Set) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIF, Register: reg32(0)},
			net(off, n, reg32(1)),
			&expr.Lookup{SourceRegister: reg32(0), SetName: s.Name, SetID: s.ID},
		}
	}
	eq := func(b []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: b} }
	accept, drop := &expr.Verdict{Kind: expr.VerdictAccept}, &expr.Verdict{Kind: expr.VerdictDrop}
	is := func(t uint16, e ...expr.Any) []expr.Any { return append(etherType(t), e...) }
	with := func(a []expr.Any, e ...expr.Any) []expr.Any { return append(a, e...) }
	return [][]expr.Any{
		{&expr.Meta{Key: expr.MetaKeyIIF, Register: reg1},
			&expr.Lookup{SourceRegister: reg1, SetName: ps.ports.Name, SetID: ps.ports.ID, Invert: true}, accept},
		is(unix.ETH_P_8021Q, drop),
		is(unix.ETH_P_8021AD, drop),
		is(unix.ETH_P_IP, with(portAddr(12, 4, ps.addrs4), accept)...),
		is(unix.ETH_P_IP, drop),
		is(unix.ETH_P_IPV6, net(8, 2, reg1),
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 2, Mask: []byte{0xff, 0xc0}, Xor: []byte{0, 0}},
			eq([]byte{0xfe, 0x80}), accept),
		is(unix.ETH_P_IPV6, net(8, 16, reg1), eq(make([]byte, 16)), accept),
		is(unix.ETH_P_IPV6, with(portAddr(8, 16, ps.addrs6), accept)...),
		is(unix.ETH_P_IPV6, drop),
		is(unix.ETH_P_ARP, net(4, 2, reg1), &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{6, 4}}, drop),
		is(unix.ETH_P_ARP, net(14, 4, reg1), eq(make([]byte, 4)), accept),
		is(unix.ETH_P_ARP, with(portAddr(14, 4, ps.addrs4), accept)...),
		is(unix.ETH_P_ARP, drop),
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

// GuardPort lets IP and ARP into its bridge through the port ifindex (the
// host end of an endpoint's veth, just made) only from the addresses of
// addrs (and, for IPv6, link-local addresses and the unspecified one).
// It creates nsnet's bridge table if needed, in the same transaction, and
// reads nothing else. Call it before the port is up, so that no packet
// passes unchecked.
func GuardPort(ctx context.Context, host *netns.NS, ifindex int, addrs []netip.Prefix) error {
	if ifindex <= 0 {
		return &netns.ValidationError{Pkg: "nft", Field: "ifindex", Value: "0", Reason: "not an interface index"}
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
		add := func(skeleton bool) error {
			if skeleton {
				if err := ps.skeleton(c); err != nil {
					return err
				}
			}
			if err := ps.apply(c.SetAddElements, native32(uint32(ifindex)), addrs); err != nil {
				return err
			}
			return flush(host, c, "nft.guard-port")
		}
		// The elements alone, into a table taken as whole: one request
		// where the table is there. If that fails (no table yet, or
		// someone deleted a set), the skeleton (re)makes it with them.
		if add(false) == nil {
			return nil
		}
		return add(true)
	})
}

// UnguardPort forgets the port ifindex (its link gone) and its addresses.
// Given the addresses GuardPort was given, it deletes exactly those
// elements, in one request that reads nothing; if that fails (an element
// is not there), or without addresses, it reads the sets and deletes what
// they hold of the port. A port or table that is not there is no error.
func UnguardPort(ctx context.Context, host *netns.NS, ifindex int, addrs []netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		ps := newPortSchema()
		opErr := func(err error) error {
			return &netns.OpError{Op: "nft.unguard-port", NS: host.String(), Name: TableName, Err: err}
		}
		key := native32(uint32(ifindex))
		if len(addrs) > 0 && ps.apply(c.SetDeleteElements, key, addrs) == nil && c.Flush() == nil {
			return nil
		}
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyBridge); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return opErr(err)
		}
		n, err := ps.forget(c, func(k []byte) bool { return bytes.HasPrefix(k, key) })
		if err != nil {
			return opErr(err)
		}
		if n == 0 {
			return nil
		}
		return flush(host, c, "nft.unguard-port")
	})
}

// apply batches op (c.SetAddElements or c.SetDeleteElements) on the
// elements of the port whose key (interface index) is key: the key in
// ports, and the key with each of addrs in addrs4 or addrs6.
func (ps *portSchema) apply(op func(*nftables.Set, []nftables.SetElement) error, key []byte, addrs []netip.Prefix) error {
	var v4, v6 []nftables.SetElement
	for _, p := range addrs {
		if a := p.Addr().Unmap(); a.Is4() {
			v4 = append(v4, nftables.SetElement{Key: append(bytes.Clone(key), a.AsSlice()...)})
		} else {
			v6 = append(v6, nftables.SetElement{Key: append(bytes.Clone(key), a.AsSlice()...)})
		}
	}
	errs := []error{op(ps.ports, []nftables.SetElement{{Key: key}})}
	if len(v4) > 0 {
		errs = append(errs, op(ps.addrs4, v4))
	}
	if len(v6) > 0 {
		errs = append(errs, op(ps.addrs6, v6))
	}
	return errors.Join(errs...)
}

// forget batches the deletion of the elements of every set whose port
// (the key's first 4 bytes) gone says goes, and returns how many.
func (ps *portSchema) forget(c *nftables.Conn, gone func(key []byte) bool) (int, error) {
	total := 0
	for _, s := range ps.sets() {
		n, err := deleteElems(c, s, func(e nftables.SetElement) bool { return len(e.Key) >= 4 && gone(e.Key[:4]) })
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// prunePorts forgets the guarded ports that are not among links, the
// links of host (their endpoints' containers died, and nobody detached
// them), and deletes the bridge table when no guarded port is left, in
// one transaction.
func prunePorts(ctx context.Context, host *netns.NS, links []netlink.Link) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	live := map[string]bool{}
	for _, l := range links {
		live[string(native32(uint32(l.Attrs().Index)))] = true
	}
	return host.NFTables(func(c *nftables.Conn) error {
		ps := newPortSchema()
		opErr := func(err error) error {
			return &netns.OpError{Op: "nft.prune-ports", NS: host.String(), Name: TableName, Err: err}
		}
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyBridge); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return opErr(err)
		}
		ports, err := c.GetSetElements(ps.ports)
		if err != nil {
			return opErr(err)
		}
		if !bytesAny(ports, func(k []byte) bool { return live[string(k)] }) {
			c.DelTable(ps.table)
		} else if n, err := ps.forget(c, func(k []byte) bool { return !live[string(k)] }); err != nil {
			return opErr(err)
		} else if n == 0 {
			return nil
		}
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return opErr(err)
		}
		return nil
	})
}

func bytesAny(elems []nftables.SetElement, f func([]byte) bool) bool {
	for _, e := range elems {
		if f(e.Key) {
			return true
		}
	}
	return false
}
