package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/portmap"
)

// TestReconcile flushes the host's whole ruleset (`nft flush ruleset`, a
// firewall reload) while an outside client keeps connecting to a published
// port: the connections fail, one Reconcile brings the mapping, the
// masquerade and the isolation back, and the client gets through again.
func TestReconcile(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.network(t, "a", "10.45.0.0/24")
	b := w.network(t, "b", "10.46.0.0/24")
	web, webAddr := w.container(t, a, "web")
	other, _ := w.container(t, b, "other")
	nstest.Serve(t, web, "tcp", "0.0.0.0:80")
	nstest.Serve(t, w.out.NS, "tcp", w.out.Addr.String()+":7")
	m := w.publish(t, portmap.Mapping{HostPort: 8080, CtrAddr: webAddr, CtrPort: 80, ID: "web"})
	published := netip.AddrPortFrom(w.out.HostAddr.Addr(), 8080)
	state := portmap.State{
		Networks: []portmap.Network{networkOf(a), networkOf(b)},
		Masquerade: []portmap.Masquerade{
			{Bridge: a.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("10.45.0.0/24")}},
			{Bridge: b.Config().Bridge, Subnets: []netip.Prefix{netip.MustParsePrefix("10.46.0.0/24")}},
		},
		Mappings: []portmap.Mapping{m},
	}

	// The outside client: a new connection every 20 ms.
	var ok atomic.Int64
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			if _, err := nstest.Exchange(c, w.out.NS, "tcp", published.String(), "x"); err == nil {
				ok.Add(1)
			}
			cancel()
			time.Sleep(20 * time.Millisecond)
		}
	})
	defer wg.Wait()
	defer stop()
	waitFor := func(what string, n int64) {
		t.Helper()
		start := ok.Load()
		for deadline := time.Now().Add(5 * time.Second); ok.Load() < start+n; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the outside client got through %d times in 5 s", what, ok.Load()-start)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("before the flush", 3)

	err := w.host.NFTables(func(c *nftables.Conn) error {
		c.FlushRuleset()
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	noReach(t, "after the flush", w.out.NS, "tcp", published)

	if err := portmap.Reconcile(t.Context(), w.host, state); err != nil {
		t.Fatal(err)
	}
	waitFor("after Reconcile", 3)
	// The record of route_localnet (m covers 127.0.0.1) is back: without
	// it, the table could go while route_localnet is on for the bridge.
	if rec, err := nft.Localnet(t.Context(), w.host); err != nil || !slices.Contains(rec, a.Config().Bridge) {
		t.Errorf("the route_localnet record after Reconcile: %v, %v; want %s in it", rec, err, a.Config().Bridge)
	}
	if got, err := w.mp.List(t.Context()); err != nil || len(got) != 1 || got[0] != m {
		t.Errorf("List after Reconcile: %v, %v; want [%s]", got, err, m)
	}
	r := reach(t, "egress after Reconcile", web, "tcp", netip.AddrPortFrom(w.out.Addr, 7))
	if r.Peer.Addr() != w.out.HostAddr.Addr() {
		t.Errorf("egress after Reconcile: the outside saw %s, want the uplink's address", r.Peer)
	}
	noReach(t, "isolation after Reconcile", other, "tcp", netip.AddrPortFrom(webAddr, 80))

	// Reconcile on a table that is there changes nothing and keeps the
	// user's own rules.
	userRules := func() int {
		t.Helper()
		var n int
		err := w.host.NFTables(func(c *nftables.Conn) error {
			rs, err := c.GetRules(&nftables.Table{Name: "nsnet", Family: nftables.TableFamilyINet}, &nftables.Chain{Name: "user"})
			n = len(rs)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	err = w.host.NFTables(func(c *nftables.Conn) error {
		c.AddRule(&nftables.Rule{Table: &nftables.Table{Name: "nsnet", Family: nftables.TableFamilyINet},
			Chain: &nftables.Chain{Name: "user"}, Exprs: []expr.Any{&expr.Counter{}}})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := portmap.Reconcile(t.Context(), w.host, state); err != nil {
		t.Fatal(err)
	}
	if n := userRules(); n != 1 {
		t.Errorf("the user chain has %d rules after Reconcile, want the user's 1", n)
	}
	waitFor("after the second Reconcile", 2)

	// Bad input is refused before the table is touched.
	var ve *portmap.ValidationError
	bad := state
	bad.Mappings = []portmap.Mapping{{HostPort: 0, CtrAddr: webAddr, CtrPort: 80}}
	if err := portmap.Reconcile(t.Context(), w.host, bad); !errors.As(err, &ve) {
		t.Errorf("Reconcile with an ephemeral mapping: %v, want a *ValidationError", err)
	}
	if got, err := w.mp.List(t.Context()); err != nil || len(got) != 1 {
		t.Errorf("List after a refused Reconcile: %v, %v", got, err)
	}
}

// networkOf is what Reconcile needs of a bridge network.
func networkOf(n *bridge.Network) portmap.Network {
	c := n.Config()
	pn := portmap.Network{Bridge: c.Bridge, Internal: c.Internal, DisableICC: c.DisableICC}
	for _, s := range c.Subnets {
		pn.Subnets = append(pn.Subnets, s.Subnet)
	}
	return pn
}
