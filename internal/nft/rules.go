//go:build linux

package nft

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// chainRules are the constant rules of one chain, in order.
type chainRules struct {
	chain *nftables.Chain
	rules [][]expr.Any
}

// Registers: reg 1 is 16 bytes wide; reg32 n (8 + i) are its 4-byte parts,
// so a concatenation loads its fields into consecutive reg32s.
const (
	reg1 = 1
	reg2 = 2
)

func reg32(i uint32) uint32 { return 8 + i }

func (sc *schema) rules() []chainRules {
	iif := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1}
	oif := &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg1}
	oif2 := &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg2}
	lookup := func(s *nftables.Set) *expr.Lookup {
		return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID}
	}
	verdict := func(k expr.VerdictKind) *expr.Verdict { return &expr.Verdict{Kind: k} }
	ctStatusDNAT := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(ipsDstNAT), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
	ctEstablished := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: native32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(e ...expr.Any) []expr.Any { return e }

	forward := [][]expr.Any{
		{&expr.Verdict{Kind: expr.VerdictJump, Chain: sc.user.Name}},
		{iif, oif2, lookup(sc.noicc), verdict(expr.VerdictDrop)},
		{iif, oif2, lookup(sc.same), verdict(expr.VerdictAccept)},
		{iif, lookup(sc.internal), verdict(expr.VerdictDrop)},
		{oif, lookup(sc.internal), verdict(expr.VerdictDrop)},
		// A DNATed connection goes only into nsnet's bridges: a mapping
		// left behind by a deleted network must not send outside traffic
		// on to wherever the host now routes the old container address.
		cat(ctStatusDNAT, one(&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0}}, // original
			oif, &expr.Lookup{SourceRegister: reg1, SetName: sc.bridges.Name, SetID: sc.bridges.ID, Invert: true},
			verdict(expr.VerdictDrop))),
		cat(ctStatusDNAT, one(verdict(expr.VerdictAccept))),
		{iif, lookup(sc.bridges), oif, lookup(sc.bridges), verdict(expr.VerdictDrop)},
		cat(one(oif, lookup(sc.bridges)), ctEstablished, one(verdict(expr.VerdictAccept))),
		{oif, lookup(sc.bridges), verdict(expr.VerdictDrop)},
	}

	guard := [][]expr.Any{cat(
		one(&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: ifname("lo")}),
		nfproto(unix.NFPROTO_IPV4),
		one(ip4Daddr(reg1),
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{127, 0, 0, 0}},
			verdict(expr.VerdictDrop)),
	)}

	jumpPorts := [][]expr.Any{{&expr.Verdict{Kind: expr.VerdictJump, Chain: sc.ports.Name}}}
	l4 := func(reg uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
			&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
	}
	dnat := func(fam uint32, m *nftables.Set, addrRegs uint32) []expr.Any {
		return []expr.Any{
			&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: reg1, IsDestRegSet: true},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: reg1, RegProtoMin: reg32(addrRegs), Specified: true},
		}
	}
	ports := [][]expr.Any{
		{
			&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(unix.RTN_LOCAL)},
			verdict(expr.VerdictReturn),
		},
		cat(nfproto(unix.NFPROTO_IPV4), one(ip4Daddr(reg1)), l4(reg32(1)), dnat(unix.NFPROTO_IPV4, sc.dnat4, 1)),
		cat(nfproto(unix.NFPROTO_IPV4), l4(reg32(0)), dnat(unix.NFPROTO_IPV4, sc.dnat4any, 1)),
		cat(nfproto(unix.NFPROTO_IPV6), one(ip6Daddr(reg1)), l4(reg32(4)), dnat(unix.NFPROTO_IPV6, sc.dnat6, 4)),
		cat(nfproto(unix.NFPROTO_IPV6), l4(reg32(0)), dnat(unix.NFPROTO_IPV6, sc.dnat6any, 4)),
	}

	// Into a bridge, a container subnet is masqueraded only when DNATed
	// (hairpin, or a published port reached from another network), and so
	// is 127.0.0.0/8 (the host to a mapping on 127.0.0.1): otherwise the
	// reply would not come back through the host. Anything else into a
	// bridge keeps its source; anything leaving by another interface from a
	// masqueraded subnet is masqueraded.
	masq := func(fam byte, saddr expr.Any, addrLen uint32, masq *nftables.Set, loopback []byte) [][]expr.Any {
		fromMasq := one(withReg(saddr, reg1), lookup(masq))
		intoBridge := one(oif, lookup(sc.bridges))
		rs := [][]expr.Any{cat(nfproto(fam), ctStatusDNAT, intoBridge, fromMasq, one(&expr.Masq{}))}
		if loopback != nil {
			rs = append(rs, cat(nfproto(fam), intoBridge, one(withReg(saddr, reg1),
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: addrLen, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: loopback},
				&expr.Masq{})))
		}
		return append(rs,
			cat(nfproto(fam), intoBridge, one(verdict(expr.VerdictReturn))),
			cat(nfproto(fam), fromMasq, one(&expr.Masq{})))
	}
	postrouting := append(
		masq(unix.NFPROTO_IPV4, ip4Saddr(reg1), 4, sc.masq4, []byte{127, 0, 0, 0}),
		masq(unix.NFPROTO_IPV6, ip6Saddr(reg1), 16, sc.masq6, nil)...)

	return []chainRules{
		{sc.forward, forward},
		{sc.guard, guard},
		{sc.prerouting, jumpPorts},
		{sc.output, jumpPorts},
		{sc.ports, ports},
		{sc.postrouting, postrouting},
	}
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status: the connection was
// DNATed.
const ipsDstNAT = 1 << 5

func native32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func nfproto(fam byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{fam}},
	}
}

func ip4Saddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
}

func ip4Daddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
}

func ip6Saddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16}
}

func ip6Daddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}
}

// withReg returns a copy of the payload load p into reg.
func withReg(p expr.Any, reg uint32) expr.Any {
	c := *p.(*expr.Payload)
	c.DestRegister = reg
	return &c
}
