package overlay_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/nsnet/nsnet/overlay"
)

// TestDeleteRacingAttach: a Delete on one host and an Attach on another
// of the same network, in both orders of their steps (held there by step
// hooks): the Delete fails with ErrInUse, or the Attach with ErrNotFound
// leaving nothing behind; never both succeed, leaving an endpoint of a
// network that is gone.
func TestDeleteRacingAttach(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, ipam.NewMemoryStore())
	cfg := overlay.Config{Name: "race", VNI: 31, Subnets: subnets("10.72.0.0/24"), Internal: true}
	ctr := nstest.Container(t, c.topo.Hosts[1].NS)
	define := func() *overlay.Network {
		t.Helper()
		if _, err := c.hosts[0].Create(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
		n, err := c.hosts[1].Network(t.Context(), cfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// hold makes the call that reaches step at wait there until release
	// is closed; reached is closed when it does.
	hold := func(at string) (reached, release chan struct{}) {
		reached, release = make(chan struct{}), make(chan struct{})
		overlay.SetStepHook(cfg.Name, func(s string) error {
			if s == at {
				close(reached)
				<-release
			}
			return nil
		})
		return reached, release
	}
	defer overlay.SetStepHook(cfg.Name, nil)

	// 1. The Attach has claimed the endpoint when the Delete checks.
	n := define()
	reached, release := hold("claim")
	attached := make(chan error, 1)
	go func() {
		_, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctr})
		attached <- err
	}()
	<-reached
	overlay.SetStepHook(cfg.Name, nil)
	if err := c.hosts[0].Delete(t.Context(), cfg.Name); !errors.Is(err, overlay.ErrInUse) {
		t.Errorf("Delete while an Attach has claimed: %v, want ErrInUse", err)
	}
	close(release)
	if err := <-attached; err != nil {
		t.Fatalf("the Attach: %v", err)
	}
	if err := n.Detach(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}

	// 2. The Delete has checked (no endpoint yet) when the Attach claims.
	reached, release = hold("checked")
	deleted := make(chan error, 1)
	go func() { deleted <- c.hosts[0].Delete(t.Context(), cfg.Name) }()
	<-reached
	overlay.SetStepHook(cfg.Name, nil)
	if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctr}); err != nil {
		t.Fatalf("Attach while a Delete has checked: %v", err)
	}
	close(release)
	if err := <-deleted; !errors.Is(err, overlay.ErrInUse) {
		t.Errorf("the Delete after an Attach claimed: %v, want ErrInUse", err)
	}
	if err := n.CheckEndpoint(t.Context(), "c1", ctr); err != nil {
		t.Errorf("the endpoint: %v", err)
	}
	if err := n.Detach(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}

	// 3. The Delete is done before the Attach claims: the Attach fails
	// with ErrNotFound and leaves nothing.
	if err := c.hosts[0].Delete(t.Context(), cfg.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c1", NS: ctr}); !errors.Is(err, overlay.ErrNotFound) {
		t.Errorf("Attach to a deleted network: %v, want ErrNotFound", err)
	}
	if links := nstest.LinkNames(t, ctr); len(links) != 1 {
		t.Errorf("the container has %v", links)
	}
	for _, prefix := range []string{"overlay/ep/", "overlay/net/", "overlay/vni/"} {
		kvs, _, err := c.store.List(t.Context(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			t.Errorf("left in the store: %s", kv.Key)
		}
	}
}

// TestCreateConcurrently: three hosts creating one network at the same
// moment all get it, with its pool whole (no loser's undo deleting the
// winner's pool), 20 rounds; one with other settings afterwards fails
// with ErrExists without touching the network.
func TestCreateConcurrently(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, ipam.NewMemoryStore())
	ctr := nstest.Container(t, c.topo.Hosts[0].NS)
	for round := range 20 {
		cfg := overlay.Config{Name: fmt.Sprint("net", round), VNI: uint32(100 + round),
			Subnets: subnets(fmt.Sprintf("10.73.%d.0/24", round)), Internal: true}
		// The first Create to have made the pool waits there (odd rounds)
		// until the others are done: it then loses the race to define
		// the network, with a pool of its own making that is now the
		// winner's too.
		held, release := make(chan struct{}), make(chan struct{})
		var first atomic.Bool
		if round%2 == 1 {
			overlay.SetStepHook(cfg.Name, func(s string) error {
				if s == "pool" && first.CompareAndSwap(false, true) {
					close(held)
					<-release
				}
				return nil
			})
		} else {
			close(held)
		}
		start := make(chan struct{})
		errs := make(chan error, len(c.hosts))
		var wg, others sync.WaitGroup
		for i, h := range c.hosts {
			if i > 0 {
				others.Add(1)
			}
			wg.Go(func() {
				if i > 0 {
					defer others.Done()
					<-held
				}
				<-start
				_, err := h.Create(t.Context(), cfg)
				errs <- err
			})
		}
		close(start)
		if round%2 == 1 {
			others.Wait()
			close(release)
		}
		wg.Wait()
		overlay.SetStepHook(cfg.Name, nil)
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: Create: %v", round, err)
			}
		}
		other := cfg
		other.Subnets = subnets(fmt.Sprintf("10.74.%d.0/24", round))
		if _, err := c.hosts[2].Create(t.Context(), other); !errors.Is(err, overlay.ErrExists) {
			t.Fatalf("round %d: Create with other settings: %v, want ErrExists", round, err)
		}
		for i, h := range c.hosts {
			n, err := h.Network(t.Context(), cfg.Name)
			if err != nil {
				t.Fatalf("round %d: host%d: %v", round, i+1, err)
			}
			if got := n.Config(); got.VNI != cfg.VNI || got.Subnets[0].Subnet != cfg.Subnets[0].Subnet {
				t.Fatalf("round %d: host%d sees %+v", round, i+1, got)
			}
		}
		n, err := c.hosts[0].Network(t.Context(), cfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Attach(t.Context(), overlay.EndpointConfig{ID: "c", NS: ctr}); err != nil {
			t.Fatalf("round %d: Attach (the pool must be whole): %v", round, err)
		}
		if err := n.Detach(t.Context(), "c"); err != nil {
			t.Fatal(err)
		}
		if err := c.hosts[1].Delete(t.Context(), cfg.Name); err != nil {
			t.Fatal(err)
		}
	}
}
