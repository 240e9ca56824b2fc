package portmap_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
	"golang.org/x/sys/unix"
)

// dockerRuleset adds to host what dockerd (through iptables-nft) puts in a
// host's ruleset: tables "ip filter" and "ip nat" with its chains and
// rules for docker0 and a port it publishes. The FORWARD policy is accept
// (dockerd's "ip-forward-no-drop"): with Docker's default drop policy its
// table drops what no rule of its own accepts, nsnet's traffic included,
// and nsnet does not change other tables' policies.
func dockerRuleset(t *testing.T, host *netns.NS) {
	t.Helper()
	err := host.NFTables(func(c *nftables.Conn) error {
		filter := c.AddTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4})
		natT := c.AddTable(&nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv4})
		accept := nftables.ChainPolicyAccept
		base := func(tb *nftables.Table, name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
			return c.AddChain(&nftables.Chain{Name: name, Table: tb, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
		}
		chain := func(tb *nftables.Table, name string) *nftables.Chain {
			return c.AddChain(&nftables.Chain{Name: name, Table: tb})
		}
		rule := func(ch *nftables.Chain, exprs ...expr.Any) {
			c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: exprs})
		}
		ifname := func(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
			b := make([]byte, 16)
			copy(b, name)
			return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: b}}
		}
		jump := func(ch *nftables.Chain) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name} }
		forward := base(filter, "FORWARD", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
		base(filter, "INPUT", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
		base(filter, "OUTPUT", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
		user, docker := chain(filter, "DOCKER-USER"), chain(filter, "DOCKER")
		iso1, iso2 := chain(filter, "DOCKER-ISOLATION-STAGE-1"), chain(filter, "DOCKER-ISOLATION-STAGE-2")
		rule(forward, jump(user))
		rule(forward, jump(iso1))
		rule(forward, append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, "docker0"),
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: []byte{byte(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Verdict{Kind: expr.VerdictAccept})...)
		rule(forward, append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, "docker0"), jump(docker))...)
		rule(forward, append(append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, "docker0"),
			ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, "docker0")...), &expr.Verdict{Kind: expr.VerdictAccept})...)
		rule(iso1, append(append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, "docker0"),
			ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, "docker0")...), jump(iso2))...)
		rule(iso1, &expr.Verdict{Kind: expr.VerdictReturn})
		rule(iso2, append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, "docker0"), &expr.Verdict{Kind: expr.VerdictDrop})...)
		rule(iso2, &expr.Verdict{Kind: expr.VerdictReturn})
		rule(user, &expr.Verdict{Kind: expr.VerdictReturn})

		pre := base(natT, "PREROUTING", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
		out := base(natT, "OUTPUT", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
		post := base(natT, "POSTROUTING", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
		dnat := chain(natT, "DOCKER")
		local := []expr.Any{&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.RTN_LOCAL, 0, 0, 0}}}
		rule(pre, append(local, jump(dnat))...)
		rule(out, append(local, jump(dnat))...)
		rule(post, append([]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{172, 17, 0, 0}}},
			append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, "docker0"), &expr.Masq{})...)...)
		rule(dnat, append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, "docker0"), &expr.Verdict{Kind: expr.VerdictReturn})...)
		rule(dnat, // tcp dport 9090 dnat to 172.17.0.2:80
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x23, 0x82}},
			&expr.Immediate{Register: 1, Data: []byte{172, 17, 0, 2}},
			&expr.Immediate{Register: 2, Data: []byte{0, 80}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		host.NFTables(func(c *nftables.Conn) error {
			c.DelTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4})
			c.DelTable(&nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv4})
			return c.Flush()
		})
	})
}

// foreignRuleset describes every table of host but nsnet's: chains with
// their hooks, priorities and policies, and rules with their handles and
// expressions.
func foreignRuleset(t *testing.T, host *netns.NS) string {
	t.Helper()
	var b strings.Builder
	err := host.NFTables(func(c *nftables.Conn) error {
		chains, err := c.ListChains()
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name == "nsnet" {
				continue
			}
			fmt.Fprintf(&b, "%v %s %s type=%s hook=%v prio=%v policy=%v\n", ch.Table.Family, ch.Table.Name, ch.Name, ch.Type,
				deref(ch.Hooknum), deref(ch.Priority), deref(ch.Policy))
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return err
			}
			for _, r := range rules {
				fmt.Fprintf(&b, "  rule %d:", r.Handle)
				for _, e := range r.Exprs {
					fmt.Fprintf(&b, " %T%+v", e, e)
				}
				b.WriteString("\n")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestDockerRuleset: with a Docker-style iptables-nft ruleset in the host,
// nsnet's masquerade, isolation and published ports work, and nothing of
// Docker's tables changes, through publishing, Reconcile and teardown.
func TestDockerRuleset(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	dockerRuleset(t, w.host)
	before := foreignRuleset(t, w.host)
	if !strings.Contains(before, "DOCKER-USER") {
		t.Fatalf("the Docker-style ruleset is not there:\n%s", before)
	}
	unchanged := func(when string) {
		t.Helper()
		if after := foreignRuleset(t, w.host); after != before {
			t.Errorf("%s, Docker's tables changed:\nbefore:\n%s\nafter:\n%s", when, before, after)
		}
	}

	a := w.network(t, "a", "10.53.0.0/24")
	b := w.network(t, "b", "10.54.0.0/24")
	web, webAddr := w.container(t, a, "web")
	other, _ := w.container(t, b, "other")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	nstest.Serve(t, w.out.NS, "tcp", w.out.Addr.String()+":7")
	m := w.publish(t, portmap.Mapping{HostPort: 8080, CtrAddr: webAddr, CtrPort: 80, ID: "web"})
	unchanged("after nsnet's networks and mapping")

	uplink := w.out.HostAddr.Addr()
	if r := reach(t, "a published port from outside", w.out.NS, "tcp", netip.AddrPortFrom(uplink, 8080)); r.Peer.Addr() != w.out.Addr {
		t.Errorf("the service saw %s, want the outside client %s", r.Peer, w.out.Addr)
	}
	if r := reach(t, "egress", web, "tcp", netip.AddrPortFrom(w.out.Addr, 7)); r.Peer.Addr() != uplink {
		t.Errorf("egress: the outside saw %s, want %s", r.Peer, uplink)
	}
	noReach(t, "isolation", other, "tcp", netip.AddrPortFrom(webAddr, 80))

	st := portmap.State{
		Networks:   []portmap.Network{networkOf(a), networkOf(b)},
		Masquerade: []portmap.Masquerade{{Bridge: a.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("10.53.0.0/24")}}},
		Mappings:   []portmap.Mapping{m},
	}
	if err := portmap.Reconcile(t.Context(), w.host, st); err != nil {
		t.Fatal(err)
	}
	unchanged("after Reconcile")
	if err := w.mp.Remove(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	unchanged("after Remove")
	for _, n := range []*bridge.Network{a, b} {
		if err := n.Delete(t.Context(), true); err != nil {
			t.Fatal(err)
		}
	}
	unchanged("after the networks' deletion")
	w.host.NFTables(func(c *nftables.Conn) error {
		if _, err := c.ListTableOfFamily("nsnet", nftables.TableFamilyINet); err == nil {
			t.Error("nsnet's table is left after its last network and mapping")
		}
		return nil
	})
}
