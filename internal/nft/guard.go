//go:build linux

package nft

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// rpfilter6 are the guard chain's rules that IPv6 lacks a sysctl for:
// strict reverse-path filtering on nsnet's bridges (the kernel's
// rp_filter is IPv4's only). A packet that arrives on a bridge from a
// source the host would not route back out of that bridge is dropped:
//
//	meta nfproto ipv6 iifname @bridges ip6 saddr != :: fib saddr . iif oif missing drop
//
// The unspecified source is let through: duplicate address detection
// sends from it, and nothing can be answered at it.
func (sc *schema) rpfilter6() [][]expr.Any {
	return [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, SetName: sc.bridges.Name, SetID: sc.bridges.ID},
		ip6Saddr(reg1),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 16)},
		&expr.Fib{Register: reg1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(0)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}}
}
