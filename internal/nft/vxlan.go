//go:build linux

package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/nsnet/nsnet/netns"
	"golang.org/x/sys/unix"
)

// The VXLAN filters. A VXLAN device takes every UDP packet to its port
// that carries its VNI, whatever its source: without a filter, anyone who
// reaches the host's port injects frames into the network. So:
//
//   - vxlan-in (input hook, before the VXLAN socket takes the packet): an
//     IPv4 UDP packet to "port . VNI" of @vxnets is dropped, and counted,
//     unless "source . VNI" is in @vxpeers. Locally generated packets and
//     those a container routes to the host's own port come this way too:
//     their source is not a peer.
//   - vxlan-out (forward hook): a packet from a masqueraded subnet to
//     "port . VNI" of @vxnets is dropped, and counted: masqueraded, it
//     would leave with the host's address, which the other hosts accept.
//
// The VNI is the 3 bytes at offset 4 of the VXLAN header, which follows
// the 8 bytes of the UDP header. A packet too short to have one matches
// neither rule, and the VXLAN socket drops it.

// vniOffset is the VNI's offset from the UDP header.
const vniOffset = 8 + 4

// VXLAN is the filter of one VXLAN network of the host.
type VXLAN struct {
	VNI  uint32
	Port uint16
	// Peers are the VTEPs (IPv4) allowed to send to the network.
	Peers []netip.Addr
}

func (sc *schema) vxlanInRules() [][]expr.Any {
	var r []expr.Any
	r = append(r, nfproto(unix.NFPROTO_IPV4)...)
	r = append(r, isUDP()...)
	r = append(r, portVNI()...)
	r = append(r, &expr.Lookup{SourceRegister: reg32(0), SetName: sc.vxnets.Name, SetID: sc.vxnets.ID},
		ip4Saddr(reg32(0)), vni(reg32(1)),
		&expr.Lookup{SourceRegister: reg32(0), SetName: sc.vxpeers.Name, SetID: sc.vxpeers.ID, Invert: true},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: sc.vxlanInDrops.Name},
		&expr.Verdict{Kind: expr.VerdictDrop})
	return [][]expr.Any{r}
}

func (sc *schema) vxlanOutRules() [][]expr.Any {
	var r []expr.Any
	r = append(r, nfproto(unix.NFPROTO_IPV4)...)
	r = append(r, ip4Saddr(reg1), &expr.Lookup{SourceRegister: reg1, SetName: sc.masq4.Name, SetID: sc.masq4.ID})
	r = append(r, isUDP()...)
	r = append(r, portVNI()...)
	r = append(r, &expr.Lookup{SourceRegister: reg32(0), SetName: sc.vxnets.Name, SetID: sc.vxnets.ID},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: sc.vxlanOutDrops.Name},
		&expr.Verdict{Kind: expr.VerdictDrop})
	return [][]expr.Any{r}
}

func isUDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

// portVNI loads "UDP destination port . VNI" into reg32(0) and reg32(1).
func portVNI() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		vni(reg32(1)),
	}
}

func vni(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: vniOffset, Len: 3}
}

// A register loaded with fewer than 4 bytes has the rest zeroed.
func vxnetKey(port uint16, vni uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b, port)
	putVNI(b[4:], vni)
	return b
}

func vxpeerKey(vtep netip.Addr, vni uint32) []byte {
	a := vtep.As4()
	b := make([]byte, 8)
	copy(b, a[:])
	putVNI(b[4:], vni)
	return b
}

func putVNI(b []byte, vni uint32) { b[0], b[1], b[2] = byte(vni>>16), byte(vni>>8), byte(vni) }

func keyVNI(key []byte) uint32 {
	if len(key) < 8 {
		return 0
	}
	return uint32(key[4])<<16 | uint32(key[5])<<8 | uint32(key[6])
}

// SetVXLAN makes the VXLAN filter of host hold, for every VNI of vnis and
// of nets, exactly what nets says: the network's port and peers, or
// nothing for a VNI that nets does not list. Other VNIs keep theirs, so
// that several owners share the filter. It is one transaction, none when
// nothing changes; it creates the table if needed, and drops it when
// nothing of nsnet's is left. Call it before a VXLAN device is made, and
// to remove a network, after its device is gone.
func SetVXLAN(ctx context.Context, host *netns.NS, vnis []uint32, nets []VXLAN) error {
	owned := map[uint32]bool{}
	for _, v := range vnis {
		owned[v] = true
	}
	want := map[string]bool{}
	for _, n := range nets {
		if n.VNI == 0 || n.VNI >= 1<<24 || n.Port == 0 {
			return fmt.Errorf("nft: VXLAN VNI %d port %d: out of range", n.VNI, n.Port)
		}
		owned[n.VNI] = true
		want["n"+string(vxnetKey(n.Port, n.VNI))] = true
		for _, p := range n.Peers {
			if !p.Is4() {
				return fmt.Errorf("nft: VXLAN VNI %d: peer %s is not an IPv4 address", n.VNI, p)
			}
			want["p"+string(vxpeerKey(p, n.VNI))] = true
		}
	}
	found := false
	err := change(ctx, host, "nft.set-vxlan", false, func(c *nftables.Conn, sc *schema) (bool, error) {
		found = true
		dirty, gone := false, map[string]bool{}
		for tag, s := range map[string]*nftables.Set{"n": sc.vxnets, "p": sc.vxpeers} {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return false, err
			}
			have := map[string]bool{}
			var del, add []nftables.SetElement
			for _, e := range elems {
				if !owned[keyVNI(e.Key)] {
					continue
				}
				have[tag+string(e.Key)] = true
				if !want[tag+string(e.Key)] {
					del = append(del, e)
					gone[tag+string(e.Key)] = true
				}
			}
			for k := range want {
				if k[:1] == tag && !have[k] {
					add = append(add, nftables.SetElement{Key: []byte(k[1:])})
				}
			}
			if len(del) > 0 {
				if err := c.SetDeleteElements(s, del); err != nil {
					return false, err
				}
			}
			if len(add) > 0 {
				if err := c.SetAddElements(s, add); err != nil {
					return false, err
				}
			}
			dirty = dirty || len(del)+len(add) > 0
		}
		if !dirty || len(nets) > 0 {
			return dirty, nil
		}
		return true, dropIfEmpty(c, sc, func(s *nftables.Set, e nftables.SetElement) bool {
			return s == sc.vxnets && gone["n"+string(e.Key)]
		})
	})
	if err != nil || found || len(nets) == 0 {
		return err
	}
	// No table: make it with the elements (its sets cannot be read
	// before the batch that makes them is applied).
	return rebuild(ctx, host, "nft.set-vxlan", func(c *nftables.Conn, sc *schema) error {
		for k := range want {
			s := sc.vxnets
			if k[0] == 'p' {
				s = sc.vxpeers
			}
			if err := c.SetAddElements(s, []nftables.SetElement{{Key: []byte(k[1:])}}); err != nil {
				return err
			}
		}
		return nil
	})
}

// VXLANDrops returns how many packets the VXLAN filters of host dropped:
// in, sent to a VXLAN network of the host by who is not its peer; out,
// VXLAN that masqueraded containers sent. A host without nsnet's table
// has dropped none.
func VXLANDrops(ctx context.Context, host *netns.NS) (in, out uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	err = host.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); errors.Is(err, unix.ENOENT) {
			return nil
		} else if err != nil {
			return &netns.OpError{Op: "nft.vxlan-drops", NS: host.String(), Name: TableName, Err: err}
		}
		for _, o := range []struct {
			obj *nftables.CounterObj
			n   *uint64
		}{{sc.vxlanInDrops, &in}, {sc.vxlanOutDrops, &out}} {
			got, err := c.GetObject(o.obj)
			if err != nil {
				return &netns.OpError{Op: "nft.vxlan-drops", NS: host.String(), Name: o.obj.Name, Err: err}
			}
			if co, ok := got.(*nftables.CounterObj); ok {
				*o.n = co.Packets
			}
		}
		return nil
	})
	return in, out, err
}

// VXLANFilters returns the VXLAN filter of host as it is in the kernel:
// each network's port and peers, ordered by VNI, peers in the kernel's
// order. A host without nsnet's table has none.
func VXLANFilters(ctx context.Context, host *netns.NS) ([]VXLAN, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	byVNI := map[uint32]*VXLAN{}
	err := host.NFTables(func(c *nftables.Conn) error {
		sc := newSchema()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); errors.Is(err, unix.ENOENT) {
			return nil
		} else if err != nil {
			return &netns.OpError{Op: "nft.vxlan-filters", NS: host.String(), Name: TableName, Err: err}
		}
		nets, err := c.GetSetElements(sc.vxnets)
		if err != nil {
			return &netns.OpError{Op: "nft.vxlan-filters", NS: host.String(), Name: sc.vxnets.Name, Err: err}
		}
		for _, e := range nets {
			if len(e.Key) >= 8 {
				byVNI[keyVNI(e.Key)] = &VXLAN{VNI: keyVNI(e.Key), Port: binary.BigEndian.Uint16(e.Key)}
			}
		}
		peers, err := c.GetSetElements(sc.vxpeers)
		if err != nil {
			return &netns.OpError{Op: "nft.vxlan-filters", NS: host.String(), Name: sc.vxpeers.Name, Err: err}
		}
		for _, e := range peers {
			if len(e.Key) < 8 {
				continue
			}
			v := byVNI[keyVNI(e.Key)]
			if v == nil {
				v = &VXLAN{VNI: keyVNI(e.Key)}
				byVNI[v.VNI] = v
			}
			v.Peers = append(v.Peers, netip.AddrFrom4([4]byte(e.Key[:4])))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]VXLAN, 0, len(byVNI))
	for _, v := range byVNI {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b VXLAN) int { return int(a.VNI) - int(b.VNI) })
	return out, nil
}
