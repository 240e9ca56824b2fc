//go:build linux

// Package nft owns nsnet's nftables table: one inet table named "nsnet" per
// host namespace, with its base chains, sets and constant rules. Per-network
// data lives in set elements, never in rules, so the rule set is the same
// whatever the number of networks. A bridge-family table of the same name
// checks the sources of what containers send (portguard.go).
package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// TableName is the name of nsnet's table.
const TableName = "nsnet"

// schema is nsnet's table and its objects. google/nftables writes into
// these values (AddSet assigns set IDs), so every operation makes its own.
//
//	table inet nsnet {
//	  chain forward { type filter hook forward priority filter
//	    jump user
//	    iifname . oifname @noicc drop; iifname . oifname @same accept
//	    iifname @internal drop; oifname @internal drop
//	    ct status dnat ct direction original oifname != @bridges drop
//	    ct status dnat accept                      # published ports
//	    iifname @bridges oifname @bridges drop     # isolation
//	    oifname @bridges ct state established,related accept
//	    oifname @bridges drop }                    # no direct access
//	  chain user {}                                # the user's, never flushed
//	  chain guard { type filter hook prerouting priority raw
//	    iifname != "lo" ip daddr 127.0.0.0/8 drop
//	    meta nfproto ipv6 iifname @bridges ip6 saddr != :: \
//	      fib saddr . iif oif missing drop }         # guard.go
//	  chain prerouting { type nat hook prerouting priority dstnat; jump ports }
//	  chain output { type nat hook output priority dstnat; jump ports }
//	  chain ports { fib daddr type != local return
//	    dnat ip to ip daddr . meta l4proto . th dport map @dnat4
//	    dnat ip to meta l4proto . th dport map @dnat4any    # and ip6 alike }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ct status dnat oifname @bridges ip saddr @masq4 masquerade # hairpin
//	    oifname @bridges ip saddr 127.0.0.0/8 masquerade  # localhost to a port
//	    oifname @bridges return
//	    ip saddr @masq4 masquerade                        # and ip6 alike }
//	  counter vxlan-in; counter vxlan-out
//	  chain vxlan-in { type filter hook input priority filter   # vxlan.go
//	    udp dport . vxlan vni @vxnets ip saddr . vxlan vni != @vxpeers counter name vxlan-in drop }
//	  chain vxlan-out { type filter hook forward priority filter
//	    ip saddr @masq4 udp dport . vxlan vni @vxnets counter name vxlan-out drop }
//	}
type schema struct {
	table *nftables.Table

	forward, user, guard, prerouting, output, ports, postrouting *nftables.Chain
	// vxlanIn, vxlanOut: the VXLAN filters (vxlan.go).
	vxlanIn, vxlanOut *nftables.Chain

	// bridges: every nsnet bridge of the host.
	bridges *nftables.Set
	// internal: bridges of internal networks (no egress).
	internal *nftables.Set
	// same: "br . br" for every bridge: routed traffic within a network.
	same *nftables.Set
	// noicc: "br . br" for networks with inter-container traffic off.
	noicc *nftables.Set
	// masqnets4, masqnets6: "br . first . last address" of every
	// masqueraded subnet: which subnets of masq4 and masq6 are whose. Rules
	// do not read them, so they are plain hash sets: an interval set of
	// concatenations (pipapo) costs the kernel a copy of the whole set per
	// transaction, 3 ms at 100 networks.
	masqnets4, masqnets6 *nftables.Set
	// masq4, masq6: the subnets to masquerade.
	masq4, masq6 *nftables.Set
	// localnet: the interfaces portmap turned route_localnet on for. The
	// table, and with it the guard, stays while any is there.
	localnet *nftables.Set
	// dnat4, dnat6: "host address . protocol . port" to "container
	// address . port"; dnat4any, dnat6any: "protocol . port" for mappings
	// on every local address.
	dnat4, dnat4any, dnat6, dnat6any *nftables.Set
	// vxnets: "UDP port . VNI" of every VXLAN network of the host;
	// vxpeers: "VTEP . VNI", who may send to it (vxlan.go). They are the
	// overlay's: Reconcile, given the bridges' state, leaves them alone.
	vxnets, vxpeers *nftables.Set
	// vxlanInDrops, vxlanOutDrops count what the VXLAN filters drop.
	vxlanInDrops, vxlanOutDrops *nftables.CounterObj
}

func newSchema() *schema {
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	concat := nftables.MustConcatSetType
	ifPair := concat(nftables.TypeIFName, nftables.TypeIFName)
	natChain := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio}
	}
	// The IDs name the sets within one transaction. They are set here
	// because google/nftables would otherwise take them from a package
	// counter that it increments without a lock: a data race between
	// connections of different namespaces.
	set := func(id uint32, name string, key nftables.SetDatatype) *nftables.Set {
		return &nftables.Set{Table: t, ID: id, Name: name, KeyType: key, Concatenation: strings.Contains(key.Name, " . ")}
	}
	masqSet := func(id uint32, name string, addr nftables.SetDatatype) *nftables.Set {
		s := set(id, name, addr)
		s.Interval = true
		return s
	}
	natMap := func(id uint32, name string, key, data nftables.SetDatatype) *nftables.Set {
		s := set(id, name, key)
		s.IsMap, s.DataType = true, data
		return s
	}
	v4, v6 := nftables.TypeIPAddr, nftables.TypeIP6Addr
	proto, port := nftables.TypeInetProto, nftables.TypeInetService
	return &schema{
		table: t,
		forward: &nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: ptr(nftables.ChainPolicyAccept)},
		// user is evaluated first by forward, like Docker's DOCKER-USER
		// chain: the place for the user's own policy. nsnet never flushes it.
		user: &nftables.Chain{Name: "user", Table: t},
		guard: &nftables.Chain{Name: "guard", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: ptr(nftables.ChainPolicyAccept)},
		prerouting:  natChain("prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		output:      natChain("output", nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		ports:       &nftables.Chain{Name: "ports", Table: t},
		postrouting: natChain("postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),

		bridges:   set(1, "bridges", nftables.TypeIFName),
		internal:  set(2, "internal", nftables.TypeIFName),
		same:      set(3, "same", ifPair),
		noicc:     set(4, "noicc", ifPair),
		localnet:  set(15, "localnet", nftables.TypeIFName),
		masqnets4: set(13, "masqnets4", concat(nftables.TypeIFName, v4, v4)),
		masqnets6: set(14, "masqnets6", concat(nftables.TypeIFName, v6, v6)),
		masq4:     masqSet(7, "masq4", v4),
		masq6:     masqSet(8, "masq6", v6),
		dnat4:     natMap(9, "dnat4", concat(v4, proto, port), concat(v4, port)),
		dnat4any:  natMap(10, "dnat4any", concat(proto, port), concat(v4, port)),
		dnat6:     natMap(11, "dnat6", concat(v6, proto, port), concat(v6, port)),
		dnat6any:  natMap(12, "dnat6any", concat(proto, port), concat(v6, port)),

		vxlanIn: &nftables.Chain{Name: "vxlan-in", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: ptr(nftables.ChainPolicyAccept)},
		vxlanOut: &nftables.Chain{Name: "vxlan-out", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: ptr(nftables.ChainPolicyAccept)},
		// The VNI is 3 bytes; a register holds it in 4, the last zero.
		vxnets:        set(15, "vxnets", concat(port, nftables.TypeInteger)),
		vxpeers:       set(16, "vxpeers", concat(v4, nftables.TypeInteger)),
		vxlanInDrops:  &nftables.CounterObj{Table: t, Name: "vxlan-in"},
		vxlanOutDrops: &nftables.CounterObj{Table: t, Name: "vxlan-out"},
	}
}

func (sc *schema) sets() []*nftables.Set {
	return []*nftables.Set{sc.bridges, sc.internal, sc.same, sc.noicc, sc.masqnets4, sc.masqnets6, sc.masq4, sc.masq6,
		sc.dnat4, sc.dnat4any, sc.dnat6, sc.dnat6any, sc.localnet}
}

// chains are the chains the skeleton owns the rules of (not user).
func (sc *schema) chains() []*nftables.Chain {
	return []*nftables.Chain{sc.forward, sc.guard, sc.prerouting, sc.output, sc.ports, sc.postrouting, sc.vxlanIn, sc.vxlanOut}
}

func ptr[T any](v T) *T { return &v }

// Network is what the isolation rules need to know of a bridge network.
type Network struct {
	Bridge   string
	Subnets  []netip.Prefix
	Internal bool
	// ICC false drops traffic routed from the bridge back to itself
	// (Docker's icc=false).
	ICC bool
}

func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

func pair(name string) []byte { return append(ifname(name), ifname(name)...) }

// skeleton adds to c's batch the table, chains, sets and the constant
// rules, flushing nsnet's chains first (not user): applied to an existing
// table it changes nothing, applied after a flush it restores it.
func (sc *schema) skeleton(c *nftables.Conn) error {
	c.AddTable(sc.table)
	c.AddChain(sc.user)
	c.AddChain(sc.ports)
	for _, ch := range sc.chains() {
		if ch != sc.ports {
			c.AddChain(ch)
		}
	}
	for _, s := range append(sc.sets(), sc.vxnets, sc.vxpeers) {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	// Adding a counter that exists keeps its count.
	c.AddObj(sc.vxlanInDrops)
	c.AddObj(sc.vxlanOutDrops)
	for _, ch := range sc.chains() {
		c.FlushChain(ch)
	}
	for _, cr := range append(sc.rules(), chainRules{sc.guard, sc.rpfilter6()}) {
		for _, r := range cr.rules {
			c.AddRule(&nftables.Rule{Table: sc.table, Chain: cr.chain, Exprs: r, UserData: []byte("nsnet")})
		}
	}
	return nil
}

// Ensure creates nsnet's table with its chains, sets and rules in host, in
// one transaction; on a table that exists it changes nothing but restores
// the constant rules.
func Ensure(ctx context.Context, host *netns.NS) error {
	return rebuild(ctx, host, "nft.ensure", func(*nftables.Conn, *schema) error { return nil })
}

// rebuild batches the skeleton (creating or restoring the table), then
// what fn adds, and flushes it all as one transaction.
func rebuild(ctx context.Context, host *netns.NS, op string, fn func(*nftables.Conn, *schema) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		if err := sc.skeleton(c); err != nil {
			return err
		}
		if err := fn(c, sc); err != nil {
			return err
		}
		return flush(host, c, op)
	})
}

func flush(host *netns.NS, c *nftables.Conn, op string) error {
	if err := c.Flush(); err != nil {
		return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
	}
	return nil
}

// AddNetwork puts a network's bridge into the isolation sets, creating the
// table if needed, in one transaction; it restores the constant rules too.
// Adding it again changes nothing. Its masquerade is SetMasquerade's.
func AddNetwork(ctx context.Context, host *netns.NS, n Network) error {
	return rebuild(ctx, host, "nft.add-network", func(c *nftables.Conn, sc *schema) error {
		return addNetwork(c, sc, n)
	})
}

func addNetwork(c *nftables.Conn, sc *schema, n Network) error {
	add := func(s *nftables.Set, key []byte) error {
		return c.SetAddElements(s, []nftables.SetElement{{Key: key}})
	}
	errs := []error{add(sc.bridges, ifname(n.Bridge)), add(sc.same, pair(n.Bridge))}
	if n.Internal {
		errs = append(errs, add(sc.internal, ifname(n.Bridge)))
	}
	if !n.ICC {
		errs = append(errs, add(sc.noicc, pair(n.Bridge)))
	}
	return errors.Join(errs...)
}

// RemoveNetwork takes a bridge out of every set, its masquerade included.
// A bridge (or a table) that is not there is no error. When nothing of
// nsnet's is left (no bridge, no mapping), the table goes too, in the same
// transaction. Guarded ports whose links are gone are forgotten first
// (portguard.go).
func RemoveNetwork(ctx context.Context, host *netns.NS, bridge string) error {
	links, err := host.Links()
	if err != nil {
		return err
	}
	if err := prunePorts(ctx, host, links); err != nil {
		return err
	}
	return change(ctx, host, "nft.remove-network", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		dirty := false
		for _, s := range []*nftables.Set{sc.bridges, sc.internal, sc.same, sc.noicc} {
			key := ifname(bridge)
			if s.Concatenation {
				key = pair(bridge)
			}
			n, err := deleteElems(c, s, func(e nftables.SetElement) bool { return string(e.Key) == string(key) })
			if err != nil {
				return false, err
			}
			dirty = dirty || n > 0
		}
		n, err := removeMasq(c, sc, bridge)
		if err != nil {
			return false, err
		}
		dirty = dirty || n > 0
		if !dirty {
			return false, nil
		}
		return true, dropIfEmpty(c, sc, bridgeGone(sc, bridge, true))
	})
}

// dropIfEmpty deletes the table in c's batch if, once that batch is
// applied, nothing of nsnet's is left in it: no bridge, masquerade,
// mapping or VXLAN network, no interface with route_localnet, but the
// elements for which gone is true. It reads the sets in that order and
// stops at the first element that stays, so a host with networks pays for
// one read of the bridges.
func dropIfEmpty(c *nftables.Conn, sc *schema, gone func(*nftables.Set, nftables.SetElement) bool) error {
	empty, err := isEmpty(c, sc, gone)
	if empty {
		c.DelTable(sc.table)
	}
	return err
}

// isEmpty is dropIfEmpty's question: would nothing of nsnet's be left?
func isEmpty(c *nftables.Conn, sc *schema, gone func(*nftables.Set, nftables.SetElement) bool) (bool, error) {
	for _, s := range []*nftables.Set{sc.bridges, sc.masqnets4, sc.masqnets6, sc.dnat4, sc.dnat4any, sc.dnat6, sc.dnat6any, sc.vxnets, sc.localnet} {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return false, err
		}
		for _, e := range elems {
			if !gone(s, e) {
				return false, nil
			}
		}
	}
	return true, nil
}

// DropIfEmpty deletes host's table if nothing of nsnet's is in it: no
// bridge, masquerade, mapping, VXLAN network or route_localnet record (a
// table that a process killed after making it left empty). A table that
// is not there is no error.
func DropIfEmpty(ctx context.Context, host *netns.NS) error {
	return change(ctx, host, "nft.drop-if-empty", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		empty, err := isEmpty(c, sc, func(*nftables.Set, nftables.SetElement) bool { return false })
		if empty {
			c.DelTable(sc.table)
		}
		return empty, err
	})
}

// StepFunc is a test's hook into a change, called with the name of each
// step as it is done (see WithStep).
type StepFunc func(step string)

type stepKey struct{}

// WithStep returns ctx with a hook that change calls at its steps: "table"
// once it has made the table, before the change itself. Tests use it to
// stop (or kill) a process there.
func WithStep(ctx context.Context, f StepFunc) context.Context {
	return context.WithValue(ctx, stepKey{}, f)
}

func step(ctx context.Context, name string) {
	if f, ok := ctx.Value(stepKey{}).(StepFunc); ok && f != nil {
		f(name)
	}
}

// bridgeGone is dropIfEmpty's gone for a bridge whose elements go: with
// bridgeToo, the bridge itself; else its masquerade only.
func bridgeGone(sc *schema, bridge string, bridgeToo bool) func(*nftables.Set, nftables.SetElement) bool {
	return func(s *nftables.Set, e nftables.SetElement) bool {
		switch s {
		case sc.bridges:
			return bridgeToo && string(e.Key) == string(ifname(bridge))
		case sc.masqnets4, sc.masqnets6:
			return bytes.HasPrefix(e.Key, ifname(bridge))
		}
		return false
	}
}

// change runs fn on a connection to host's nsnet table and flushes what it
// batched if it reports a change. Without the table, create says whether
// to make it (the skeleton) first or to do nothing.
func change(ctx context.Context, host *netns.NS, op string, create bool, fn func(*nftables.Conn, *schema) (bool, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
			}
			if !create {
				return nil
			}
			if err := sc.skeleton(c); err != nil {
				return err
			}
			// Made first, on its own: fn reads the table's sets, which
			// the kernel has only once the skeleton is flushed.
			if err := flush(host, c, op); err != nil {
				return err
			}
			step(ctx, "table")
		}
		dirty, err := fn(c, sc)
		if err != nil {
			return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
		}
		if !dirty {
			return nil
		}
		return flush(host, c, op)
	})
}

// deleteElems batches the deletion of the elements of s for which match is
// true and returns how many.
func deleteElems(c *nftables.Conn, s *nftables.Set, match func(nftables.SetElement) bool) (int, error) {
	elems, err := c.GetSetElements(s)
	if err != nil {
		return 0, err
	}
	var del []nftables.SetElement
	for _, e := range elems {
		if match(e) {
			del = append(del, e)
		}
	}
	if len(del) == 0 {
		return 0, nil
	}
	return len(del), c.SetDeleteElements(s, del)
}

// Delete removes nsnet's table from host; a table that is gone is no error.
func Delete(ctx context.Context, host *netns.NS) error {
	return host.NFTables(func(c *nftables.Conn) error {
		c.DelTable(newSchema().table)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("nft: delete table: %w", err)
		}
		return nil
	})
}
