package portmap

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/nsnet/nsnet/internal/nft"
	"github.com/vishvananda/netlink"
)

// GC removes every mapping of the host's table whose owner is not live:
// those that a process killed before it could remove them (or before it
// returned their Add) left. live are the IDs of the owners the caller
// holds (its containers), as CNI's GC takes them; nil or empty: none is
// live. It is the recovery call of a restarted orchestrator (see doc.go,
// Recovery) and returns what it removed, one Mapping per port.
//
// A mapping without an ID is kept, as no owner can be judged, and so are
// dnsd's redirects. The removal is Remove's, in one nftables transaction:
// the mappings' conntrack entries go with them, and their reservations if
// this Mapper holds them. Then route_localnet is made what the mappings
// left need: on, and recorded in the table, for the interfaces towards
// their containers that cover 127.0.0.1; off, and out of the record, for
// those the record holds that none needs. A table with nothing of nsnet's
// left goes.
//
// GC holds no reservation for the mappings it keeps: call Reserve for
// them (List returns them). Errors: ErrNoMapper; a *ValidationError for a
// nil ctx.
func (mp *Mapper) GC(ctx context.Context, live []string) ([]Mapping, error) {
	if err := mp.ok(); err != nil {
		return nil, err
	}
	if ctx == nil {
		return nil, invalid("ctx", nil, "nil context")
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	// Another process may have changed the table: read it afresh.
	mp.index = nil
	if err := mp.load(ctx); err != nil {
		return nil, err
	}
	var dead []nft.Mapping
	for _, es := range mp.index {
		for _, e := range es {
			if e.ID != "" && e.ID != nft.DNSRedirectID && !slices.Contains(live, e.ID) {
				dead = append(dead, e)
			}
		}
	}
	if err := mp.remove(ctx, dead); err != nil {
		return nil, err
	}
	out := toMappings(dead)
	if err := mp.convergeLocalnet(ctx); err != nil {
		return out, err
	}
	if err := nft.DropIfEmpty(ctx, mp.host); err != nil {
		return out, err
	}
	return out, nil
}

// convergeLocalnet makes route_localnet, and the table's record of it,
// what the mappings of the index need (see GC). Call with mp.mu held and
// the index loaded.
func (mp *Mapper) convergeLocalnet(ctx context.Context) error {
	var ctrs []netip.Addr
	for _, es := range mp.index {
		for _, e := range es {
			if coversLoopback(e.HostAddr, e.CtrAddr) && !slices.Contains(ctrs, e.CtrAddr) {
				ctrs = append(ctrs, e.CtrAddr)
			}
		}
	}
	need := mp.localnetLinks(ctrs)
	rec, err := nft.Localnet(ctx, mp.host)
	if err != nil {
		return err
	}
	var add, drop []string
	for _, n := range need {
		if !slices.Contains(rec, n) {
			add = append(add, n)
		}
	}
	if len(add) > 0 {
		if err := nft.AddMappings(ctx, mp.host, nil, add...); err != nil {
			return err
		}
	}
	// On for every interface that needs it (a process killed between the
	// record and the sysctl left it off).
	if err := mp.setLocalnet(need, true); err != nil {
		return err
	}
	h, err := mp.host.Netlink()
	if err != nil {
		return err
	}
	for _, r := range rec {
		if slices.Contains(need, r) {
			continue
		}
		var notFound netlink.LinkNotFoundError
		if _, err := h.LinkByName(r); err == nil {
			if err := mp.setLocalnet([]string{r}, false); err != nil {
				return err
			}
		} else if !errors.As(err, &notFound) {
			return err
		}
		drop = append(drop, r)
	}
	if len(drop) > 0 {
		return nft.RemoveMappings(ctx, mp.host, nil, drop...)
	}
	return nil
}

// toMappings turns table elements into Mappings, one per port, ordered as
// List orders them.
func toMappings(elems []nft.Mapping) []Mapping {
	out := make([]Mapping, 0, len(elems))
	for _, e := range elems {
		proto := ""
		for name, p := range protos {
			if p == e.Proto {
				proto = name
			}
		}
		out = append(out, Mapping{Proto: proto, HostAddr: e.HostAddr, HostPort: int(e.HostPort),
			CtrAddr: e.CtrAddr, CtrPort: int(e.CtrPort), ID: e.ID})
	}
	slices.SortFunc(out, compareMappings)
	return out
}

func compareMappings(a, b Mapping) int {
	if a.Proto != b.Proto {
		if a.Proto < b.Proto {
			return -1
		}
		return 1
	}
	if c := a.HostAddr.Compare(b.HostAddr); c != 0 {
		return c
	}
	return a.HostPort - b.HostPort
}
