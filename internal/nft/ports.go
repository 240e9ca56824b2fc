//go:build linux

package nft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// DNSRedirectID is the ID of dnsd's redirects to its listeners (they are
// elements of the DNAT maps too): no portmap owner, so portmap's GC keeps them.
const DNSRedirectID = "nsnet-dns"

// Mapping is one published port: one element of a DNAT map. A port range
// is one Mapping per port.
type Mapping struct {
	Proto    uint8      // IPPROTO_TCP, _UDP or _SCTP
	HostAddr netip.Addr // the zero Addr: every local address of CtrAddr's family
	HostPort uint16
	CtrAddr  netip.Addr
	CtrPort  uint16
	ID       string // the element's comment: whose mapping it is
}

func (m Mapping) set(sc *schema) *nftables.Set {
	switch {
	case m.CtrAddr.Is4() && m.HostAddr.IsValid():
		return sc.dnat4
	case m.CtrAddr.Is4():
		return sc.dnat4any
	case m.HostAddr.IsValid():
		return sc.dnat6
	default:
		return sc.dnat6any
	}
}

// key is the element's key: [host address .] protocol . port, each field
// padded to 4 bytes as in every concatenation.
func (m Mapping) key() []byte {
	var b []byte
	if m.HostAddr.IsValid() {
		b = m.HostAddr.AsSlice()
	}
	b = append(b, m.Proto, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, m.HostPort)
	return append(b, 0, 0)
}

func (m Mapping) elem() nftables.SetElement {
	val := binary.BigEndian.AppendUint16(m.CtrAddr.AsSlice(), m.CtrPort)
	return nftables.SetElement{Key: m.key(), Val: append(val, 0, 0), Comment: m.ID}
}

// decode reads back an element of the map s.
func decode(sc *schema, s *nftables.Set, e nftables.SetElement) (Mapping, error) {
	alen := 4
	if s == sc.dnat6 || s == sc.dnat6any {
		alen = 16
	}
	var m Mapping
	key := e.Key
	if s == sc.dnat4 || s == sc.dnat6 {
		if len(key) < alen {
			return m, fmt.Errorf("element of %s: key of %d bytes", s.Name, len(key))
		}
		m.HostAddr, _ = netip.AddrFromSlice(key[:alen])
		key = key[alen:]
	}
	if len(key) != 8 || len(e.Val) != alen+4 {
		return m, fmt.Errorf("element of %s: key of %d bytes, value of %d", s.Name, len(e.Key), len(e.Val))
	}
	m.Proto, m.HostPort = key[0], binary.BigEndian.Uint16(key[4:])
	m.CtrAddr, _ = netip.AddrFromSlice(e.Val[:alen])
	m.CtrPort = binary.BigEndian.Uint16(e.Val[alen:])
	m.ID = e.Comment
	return m, nil
}

// AddMappings adds mappings in one transaction, creating the table if
// needed, and records the interfaces in localnet as having route_localnet
// on (the table stays while any is recorded). A mapping whose key is there
// already is replaced.
func AddMappings(ctx context.Context, host *netns.NS, ms []Mapping, localnet ...string) error {
	return change(ctx, host, "nft.add-mappings", true, func(c *nftables.Conn, sc *schema) (bool, error) {
		if err := setLocalnet(c, sc, localnet, c.SetAddElements); err != nil {
			return false, err
		}
		return true, addMappings(c, sc, ms)
	})
}

func setLocalnet(c *nftables.Conn, sc *schema, names []string, op func(*nftables.Set, []nftables.SetElement) error) error {
	if len(names) == 0 {
		return nil
	}
	elems := make([]nftables.SetElement, len(names))
	for i, n := range names {
		elems[i] = nftables.SetElement{Key: ifname(n)}
	}
	return op(sc.localnet, elems)
}

// Localnet returns the interfaces recorded as having route_localnet on.
func Localnet(ctx context.Context, host *netns.NS) ([]string, error) {
	var out []string
	err := change(ctx, host, "nft.localnet", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		elems, err := c.GetSetElements(sc.localnet)
		for _, e := range elems {
			out = append(out, string(bytes.TrimRight(e.Key, "\x00")))
		}
		return false, err
	})
	return out, err
}

func addMappings(c *nftables.Conn, sc *schema, ms []Mapping) error {
	bySet := map[*nftables.Set][]nftables.SetElement{}
	for _, m := range ms {
		bySet[m.set(sc)] = append(bySet[m.set(sc)], m.elem())
	}
	for _, s := range sc.sets() {
		if elems := bySet[s]; len(elems) > 0 {
			if err := c.SetAddElements(s, elems); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemoveMappings removes the mappings' elements (by key) in one
// transaction; those that are not there are no error. When nothing of
// nsnet's is left, the table goes too, in the same transaction.
//
// It deletes by key without reading the maps first, so its cost does not
// grow with the number of mappings; only when the kernel reports that a key
// was not there (the transaction then changed nothing) does it read the
// maps and delete what is there.
//
// The interfaces in unLocalnet are no longer recorded as having
// route_localnet on (the caller turned it off).
func RemoveMappings(ctx context.Context, host *netns.NS, ms []Mapping, unLocalnet ...string) error {
	if len(ms) == 0 && len(unLocalnet) == 0 {
		return nil
	}
	err := removeMappings(ctx, host, ms, unLocalnet, false)
	if errors.Is(err, unix.ENOENT) {
		err = removeMappings(ctx, host, ms, unLocalnet, true)
	}
	return err
}

func removeMappings(ctx context.Context, host *netns.NS, ms []Mapping, unLocalnet []string, read bool) error {
	return change(ctx, host, "nft.remove-mappings", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		removed := map[*nftables.Set]map[string]bool{}
		if len(unLocalnet) > 0 {
			removed[sc.localnet] = map[string]bool{}
			for _, n := range unLocalnet {
				removed[sc.localnet][string(ifname(n))] = true
			}
		}
		for _, m := range ms {
			s := m.set(sc)
			if removed[s] == nil {
				removed[s] = map[string]bool{}
			}
			removed[s][string(m.key())] = true
		}
		if read {
			have, err := mappings(c, sc)
			if err != nil {
				return false, err
			}
			there := map[*nftables.Set]map[string]bool{}
			lnet, err := c.GetSetElements(sc.localnet)
			if err != nil {
				return false, err
			}
			for _, e := range lnet {
				if removed[sc.localnet][string(e.Key)] {
					if there[sc.localnet] == nil {
						there[sc.localnet] = map[string]bool{}
					}
					there[sc.localnet][string(e.Key)] = true
				}
			}
			for _, h := range have {
				if s := h.set(sc); removed[s][string(h.key())] {
					if there[s] == nil {
						there[s] = map[string]bool{}
					}
					there[s][string(h.key())] = true
				}
			}
			removed = there
		}
		if len(removed) == 0 {
			return false, nil
		}
		for _, s := range sc.sets() {
			var elems []nftables.SetElement
			for k := range removed[s] {
				elems = append(elems, nftables.SetElement{Key: []byte(k)})
			}
			if len(elems) > 0 {
				if err := c.SetDeleteElements(s, elems); err != nil {
					return false, err
				}
			}
		}
		return true, dropIfEmpty(c, sc, func(s *nftables.Set, e nftables.SetElement) bool {
			return removed[s][string(e.Key)]
		})
	})
}

// Mappings reads every mapping back from the table.
func Mappings(ctx context.Context, host *netns.NS) ([]Mapping, error) {
	var out []Mapping
	err := change(ctx, host, "nft.mappings", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		var err error
		out, err = mappings(c, sc)
		return false, err
	})
	return out, err
}

func mappings(c *nftables.Conn, sc *schema) ([]Mapping, error) {
	var out []Mapping
	for _, s := range []*nftables.Set{sc.dnat4, sc.dnat4any, sc.dnat6, sc.dnat6any} {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, err
		}
		for _, e := range elems {
			m, err := decode(sc, s, e)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
	}
	return out, nil
}
