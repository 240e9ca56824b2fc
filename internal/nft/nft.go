// Package nft owns nsnet's nftables table: one inet table named "nsnet" per
// host namespace, with its base chains, sets and constant rules. Per-network
// data lives in set elements, never in rules, so the rule set is the same
// whatever the number of networks.
package nft

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// TableName is the name of nsnet's table.
const TableName = "nsnet"

// schema is nsnet's table and its objects. google/nftables writes into
// these values (AddSet assigns set IDs), so every operation makes its own.
type schema struct {
	table   *nftables.Table
	forward *nftables.Chain
	// user is evaluated first by forward, like Docker's DOCKER-USER chain:
	// the place for the user's own policy. nsnet never flushes it.
	user *nftables.Chain
	// bridges: every nsnet bridge of the host.
	bridges *nftables.Set
	// internal: bridges of internal networks (no egress).
	internal *nftables.Set
	// same: "br . br" for every bridge: routed traffic within a network.
	same *nftables.Set
	// noicc: "br . br" for networks with inter-container traffic off.
	noicc *nftables.Set
}

func newSchema() *schema {
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	concat := nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
	return &schema{
		table: t,
		forward: &nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: ptr(nftables.ChainPolicyAccept)},
		user: &nftables.Chain{Name: "user", Table: t},
		// The IDs name the sets within one transaction. They are set here
		// because google/nftables would otherwise take them from a
		// package counter that it increments without a lock: a data race
		// between connections of different namespaces.
		bridges:  &nftables.Set{Table: t, ID: 1, Name: "bridges", KeyType: nftables.TypeIFName},
		internal: &nftables.Set{Table: t, ID: 2, Name: "internal", KeyType: nftables.TypeIFName},
		same:     &nftables.Set{Table: t, ID: 3, Name: "same", KeyType: concat, Concatenation: true},
		noicc:    &nftables.Set{Table: t, ID: 4, Name: "noicc", KeyType: concat, Concatenation: true},
	}
}

func (sc *schema) sets() []*nftables.Set {
	return []*nftables.Set{sc.bridges, sc.internal, sc.same, sc.noicc}
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

// skeleton adds to c's batch the table, chains, sets and the constant rules
// of the forward chain, which it flushes first: applied to an existing
// table it changes nothing, applied after a flush it restores it.
func (sc *schema) skeleton(c *nftables.Conn) error {
	c.AddTable(sc.table)
	c.AddChain(sc.forward)
	c.AddChain(sc.user)
	for _, s := range sc.sets() {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	c.FlushChain(sc.forward)
	iif := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}
	oif := &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}
	oif2 := &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 2}
	lookup := func(s *nftables.Set) *expr.Lookup {
		return &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}
	}
	verdict := func(k expr.VerdictKind) *expr.Verdict { return &expr.Verdict{Kind: k} }
	for _, r := range [][]expr.Any{
		{&expr.Verdict{Kind: expr.VerdictJump, Chain: sc.user.Name}},
		{iif, oif2, lookup(sc.noicc), verdict(expr.VerdictDrop)},
		{iif, oif2, lookup(sc.same), verdict(expr.VerdictAccept)},
		{iif, lookup(sc.internal), verdict(expr.VerdictDrop)},
		{oif, lookup(sc.internal), verdict(expr.VerdictDrop)},
		{iif, lookup(sc.bridges), oif, lookup(sc.bridges), verdict(expr.VerdictDrop)},
	} {
		c.AddRule(&nftables.Rule{Table: sc.table, Chain: sc.forward, Exprs: r, UserData: []byte("nsnet isolation")})
	}
	return nil
}

// Ensure creates nsnet's table with its chains, sets and rules in host, in
// one transaction; on a table that exists it changes nothing but restores
// the constant rules.
func Ensure(ctx context.Context, host *netns.NS) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		if err := newSchema().skeleton(c); err != nil {
			return err
		}
		return flush(host, c, "nft.ensure")
	})
}

func flush(host *netns.NS, c *nftables.Conn, op string) error {
	if err := c.Flush(); err != nil {
		return &netns.OpError{Op: op, NS: host.String(), Name: TableName, Err: err}
	}
	return nil
}

// AddNetwork puts a network's bridge into the isolation sets, creating the
// table if needed, in one transaction. Adding it again changes nothing.
func AddNetwork(ctx context.Context, host *netns.NS, n Network) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		if err := sc.skeleton(c); err != nil {
			return err
		}
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
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return flush(host, c, "nft.add-network")
	})
}

// RemoveNetwork takes a bridge out of every set. A bridge (or a table) that
// is not there is no error.
func RemoveNetwork(ctx context.Context, host *netns.NS, bridge string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return host.NFTables(func(c *nftables.Conn) error {
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return &netns.OpError{Op: "nft.remove-network", NS: host.String(), Name: TableName, Err: err}
		}
		sc := newSchema()
		dirty, left := false, 0
		for _, s := range sc.sets() {
			key := ifname(bridge)
			if s.Concatenation {
				key = pair(bridge)
			}
			elems, err := c.GetSetElements(s)
			if err != nil {
				return &netns.OpError{Op: "nft.remove-network", NS: host.String(), Name: s.Name, Err: err}
			}
			if slices.ContainsFunc(elems, func(e nftables.SetElement) bool { return string(e.Key) == string(key) }) {
				if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: key}}); err != nil {
					return err
				}
				dirty = true
				if s == sc.bridges {
					left = len(elems) - 1
				}
			} else if s == sc.bridges {
				left = len(elems)
			}
		}
		if left == 0 {
			// The last network is gone: so is the table, in the same
			// transaction, leaving nothing of nsnet behind.
			c.DelTable(sc.table)
		} else if !dirty {
			return nil
		}
		return flush(host, c, "nft.remove-network")
	})
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
