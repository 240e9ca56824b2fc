package stack

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/internal/nft"
)

// recover brings the host back to what the state says, after a restart
// or a crash at any point of any call (see "State and recovery" in the
// package doc):
//
//  1. each network of the state is made whole: made again as it was if
//     its bridge went (a DeleteNetwork cut short, or someone else), its
//     drift repaired; a network of an older state that went is dropped;
//  2. bridge.GC removes every network, interface, pool and allocation on
//     the host that the state does not hold (what a CreateNetwork or Run
//     cut short left);
//  3. a container any of whose interfaces is gone (its namespace died
//     while no process watched, or a Stop was cut short) is taken down and
//     dropped: it is not running, and a later Run makes it anew;
//  4. names, listeners and port reservations come back, and nsnet's
//     nftables table is made to hold exactly the state, in one
//     transaction; the record of route_localnet is made what the
//     mappings need (portmap's GC), and an empty table goes.
//
// The state is saved if it changed.
func (s *Stack) recover(ctx context.Context) error {
	changed := false
	for _, name := range slices.Sorted(maps.Keys(s.st.Networks)) {
		sn := s.st.Networks[name]
		var nw *bridge.Network
		var err error
		if sn.Bridge != nil {
			cfg := *sn.Bridge
			// It was acknowledged with these subnets; a route the host
			// has gained since does not refuse it now.
			cfg.AllowRouteOverlap = true
			nw, err = bridge.New(ctx, s.host, s.alloc, cfg)
		} else {
			nw, err = bridge.Open(ctx, s.host, s.alloc, name)
			if errors.Is(err, bridge.ErrNotFound) {
				delete(s.st.Networks, name)
				changed = true
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("stack: network %s of the state: %w", name, err)
		}
		if err := s.serveDNS(ctx, nw, sn.Internal); err != nil {
			return err
		}
	}

	// Not nil: with no network in the state, every network goes.
	live := bridge.Live{Networks: slices.AppendSeq([]string{}, maps.Keys(s.st.Networks))}
	for _, id := range slices.Sorted(maps.Keys(s.st.Containers)) {
		for _, ep := range s.st.Containers[id].Endpoints {
			live.Endpoints = append(live.Endpoints, bridge.LiveEndpoint{Network: ep.Network, ID: id})
		}
	}
	if _, err := bridge.GC(ctx, s.host, s.alloc, live); err != nil {
		return fmt.Errorf("stack: recovery: %w", err)
	}

	// One listing of the host's networks (Inspect of each would list them
	// all each time).
	infos, err := bridge.List(ctx, s.host, s.alloc)
	if err != nil {
		return fmt.Errorf("stack: recovery: %w", err)
	}
	attached := map[bridge.LiveEndpoint]bool{}
	for _, info := range infos {
		for _, ep := range info.Endpoints {
			attached[bridge.LiveEndpoint{Network: info.Name, ID: ep.ID}] = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.st.Containers)) {
		c := s.st.Containers[id]
		whole := slices.IndexFunc(c.Endpoints, func(ep Endpoint) bool {
			return !attached[bridge.LiveEndpoint{Network: ep.Network, ID: id}]
		}) < 0
		if whole {
			continue
		}
		// Its ports are not in the table's state yet (reconcile below
		// leaves them out) nor reserved; its names are not registered.
		for _, ep := range c.Endpoints {
			if nw, ok := s.nets[ep.Network]; ok {
				if err := nw.Detach(ctx, id); err != nil {
					return fmt.Errorf("stack: container %s of the state: %w", id, err)
				}
			}
		}
		delete(s.st.Containers, id)
		changed = true
	}
	if changed {
		if err := s.st.save(s.dir); err != nil {
			return err
		}
	}

	for id, c := range s.st.Containers {
		for _, ep := range c.Endpoints {
			if err := s.dns.Register(ep.Network, dnsEndpoint(c.Name, ep)); err != nil {
				return fmt.Errorf("stack: container %s: %w", id, err)
			}
		}
		for _, m := range c.Ports {
			if err := s.ports.Reserve(m); err != nil {
				return fmt.Errorf("stack: container %s: %w", id, err)
			}
		}
	}
	// A host that never had a network has no table, and gets none.
	if len(s.st.Networks) == 0 {
		if ok, err := nft.Exists(s.host); err != nil || !ok {
			return err
		}
	}
	if err := s.reconcile(ctx); err != nil {
		return err
	}
	// Reconcile keeps the record of route_localnet (the kernel's state):
	// the mappings' GC makes it what the state's mappings need (a call cut
	// short may have left it for a bridge that is gone), and drops the
	// table if nothing of nsnet's is left in it.
	var ids []string
	for _, c := range s.st.Containers {
		for _, m := range c.Ports {
			ids = append(ids, m.ID)
		}
	}
	_, err = s.ports.GC(ctx, ids)
	return err
}
