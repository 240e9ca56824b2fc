package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nsnet/nsnet/internal/ipnet"
)

// subnet is a normalized SubnetConfig with what allocation needs of it.
type subnet struct {
	cfg      SubnetConfig
	network  netip.Addr
	bcast    netip.Addr // the IPv4 broadcast address; invalid for IPv6
	first    netip.Addr // the first and last host address of the ip-range
	last     netip.Addr
	reserved map[netip.Addr]struct{}
	capacity uint64 // addresses dynamic allocation may hand out (saturated)
}

func newSubnet(sc SubnetConfig) *subnet {
	p := sc.Subnet
	n := &subnet{cfg: sc, network: p.Addr(), first: p.Addr().Next()}
	top := ipnet.Last(p)
	if p.Addr().Is4() {
		n.bcast = top
	}
	if !sc.Gateway.IsValid() {
		sc.Gateway = n.first
		n.cfg.Gateway = n.first
	}
	if len(sc.Reserved) > 0 {
		n.reserved = make(map[netip.Addr]struct{}, len(sc.Reserved))
		for _, a := range sc.Reserved {
			n.reserved[a] = struct{}{}
		}
	}
	rng := p
	if sc.IPRange.IsValid() {
		rng = sc.IPRange
	}
	n.first, n.last = rng.Addr(), ipnet.Last(rng)
	if n.first == n.network {
		n.first = n.first.Next()
	}
	if n.last == n.bcast {
		n.last = n.last.Prev()
	}
	if !n.first.IsValid() || !n.last.IsValid() || n.last.Less(n.first) {
		return n
	}
	size := uint64(math.MaxUint64)
	if b := rng.Addr().BitLen() - rng.Bits(); b < 64 {
		size = 1 << b
	}
	// Take out what is not a host address, the gateway and reserved ones.
	out := uint64(0)
	if rng.Contains(n.network) {
		out++
	}
	if n.bcast.IsValid() && rng.Contains(n.bcast) {
		out++
	}
	if rng.Contains(sc.Gateway) {
		out++
	}
	for a := range n.reserved {
		if rng.Contains(a) {
			out++
		}
	}
	if size > out {
		n.capacity = size - out
	}
	return n
}

// checkHost says why a cannot be an address of a host in the subnet, or "".
func (n *subnet) checkHost(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "not a valid address"
	case a.Zone() != "" || a.Is4In6():
		return "must be a plain IPv4 or IPv6 address"
	case !n.cfg.Subnet.Contains(a):
		return fmt.Sprintf("not in subnet %s", n.cfg.Subnet)
	case a == n.network:
		return fmt.Sprintf("the network address of %s", n.cfg.Subnet)
	case a == n.bcast:
		return fmt.Sprintf("the broadcast address of %s", n.cfg.Subnet)
	}
	return ""
}

// excluded reports whether a is never handed out.
func (n *subnet) excluded(a netip.Addr) bool {
	if a == n.network || a == n.bcast || a == n.cfg.Gateway {
		return true
	}
	_, ok := n.reserved[a]
	return ok
}

// inRange reports whether a counts against the subnet's capacity.
func (n *subnet) inRange(a netip.Addr) bool {
	return !a.Less(n.first) && !n.last.Less(a)
}

// poolRecord is a pool as the index stores it.
type poolRecord struct {
	ID      string         `json:"id"`
	Subnets []SubnetConfig `json:"subnets"`
	Created time.Time      `json:"created"`
}

// lease is one address held by an owner (the key of byOwner it is under).
type lease struct {
	addr   netip.Addr // invalid: no lease
	sub    int        // index of its subnet
	static bool
	time   int64 // unix nanoseconds
}

// poolState is the allocations of one pool, decoded. Leases are values in
// byOwner, not pointers: an allocation costs no heap object of its own.
//
// In the store, a pool is one key for the pool (its id and cursors) and
// one key per owner (its leases): a change writes the pool's key, which
// every change compares, and the keys of the owners it changed, so its
// cost does not grow with the pool.
type poolState struct {
	name    string
	rec     *poolRecord
	subnets []*subnet
	cursor  []netip.Addr          // per subnet: the address handed out last
	used    []uint64              // per subnet: allocated addresses inside the ip-range
	byAddr  map[netip.Addr]string // the owner of each leased address
	byOwner map[string]*owned
	dirty   bool // changed since decoded or written

	touched []*owned // owners whose leases changed since written
	gone    []*owned // owners that released all, whose keys are to be deleted
	spare   []*owned // owners whose keys were deleted, to use again
	meta    []byte   // the encoding of the pool's key; nil: to be made
}

// maxSpare is how many owned a state keeps for owners to come: an owner
// that allocates again (a container restarted) gets its own back, key
// included, and others one that is not allocated anew.
const maxSpare = 16

// owned is what an owner holds, and its key in the store: one heap object
// per owner, so that a commit updates it without a map write.
type owned struct {
	owner   string
	held    [2]lease // [0] IPv4, [1] IPv6
	rev     int64    // the revision of its key; 0: not written
	key     string   // its key, once made
	touched bool     // in poolState.touched
}

// live reports whether o holds an address.
func (o *owned) live() bool { return o.held[0].addr.IsValid() || o.held[1].addr.IsValid() }

func newPoolState(name string, rec *poolRecord) *poolState {
	st := &poolState{
		name:    name,
		rec:     rec,
		subnets: make([]*subnet, len(rec.Subnets)),
		cursor:  make([]netip.Addr, len(rec.Subnets)),
		used:    make([]uint64, len(rec.Subnets)),
		byAddr:  make(map[netip.Addr]string),
		byOwner: make(map[string]*owned),
	}
	for i, sc := range rec.Subnets {
		st.subnets[i] = newSubnet(sc)
	}
	return st
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func (st *poolState) subnetOf(a netip.Addr) int {
	for i, n := range st.subnets {
		if n.cfg.Subnet.Contains(a) {
			return i
		}
	}
	return -1
}

// allocate gives owner one address of each family of the pool, or returns
// what owner holds already (see st.allocation). It changes nothing unless
// it succeeds.
func (st *poolState) allocate(owner string, static []netip.Addr, now int64) ([2]lease, error) {
	o := st.byOwner[owner]
	if o != nil {
		held := o.held
		for _, a := range static {
			if !a.IsValid() {
				continue
			}
			a = a.Unmap()
			if held[family(a)].addr != a {
				return [2]lease{}, &opError{fmt.Sprintf("allocate %s in pool %s for %s: owner holds %s", a, st.name, owner, st.ownerAddrs(held)), ErrExists}
			}
		}
		return held, nil
	}
	var want [2]netip.Addr
	if len(static) > 0 {
		var err error
		if want, err = st.checkStatic(owner, static); err != nil {
			return [2]lease{}, err
		}
	}
	var picks [2]lease
	var hasFam [2]bool
	for _, n := range st.subnets {
		hasFam[family(n.network)] = true
	}
	for f := range 2 {
		if want[f].IsValid() {
			picks[f] = lease{addr: want[f], sub: st.subnetOf(want[f]), static: true, time: now}
			continue
		}
		if !hasFam[f] {
			continue
		}
		for i, n := range st.subnets {
			if family(n.network) != f || st.used[i] >= n.capacity {
				continue
			}
			picks[f] = lease{addr: st.next(i), sub: i, time: now}
			break
		}
		if !picks[f].addr.IsValid() {
			return [2]lease{}, &opError{fmt.Sprintf("allocate in pool %s for %s: IPv%d", st.name, owner, 4+2*f), ErrExhausted}
		}
	}
	for _, l := range picks {
		if l.addr.IsValid() {
			st.index(owner, l)
			if !l.static {
				st.cursor[l.sub] = l.addr
				st.meta = nil
			}
		}
	}
	o = st.revive(owner)
	o.held = picks
	st.byOwner[owner] = o // one map write for both families
	st.touch(o)
	return picks, nil
}

// checkStatic returns the static addresses asked for by family, or why
// they cannot be handed out to owner. It is apart from allocate, whose
// usual call has none, to keep allocate's stack frame small.
func (st *poolState) checkStatic(owner string, static []netip.Addr) ([2]netip.Addr, error) {
	var want [2]netip.Addr
	for i, a := range static {
		if !a.IsValid() {
			continue
		}
		field := fmt.Sprintf("static[%d]", i)
		a = a.Unmap()
		f := family(a)
		if want[f].IsValid() {
			return want, invalid(field, a, "a second static address of the same family")
		}
		s := st.subnetOf(a)
		if s < 0 {
			return want, invalid(field, a, "not in a subnet of pool %s", st.name)
		}
		n := st.subnets[s]
		if why := n.checkHost(a); why != "" {
			return want, invalid(field, a, "%s", why)
		}
		if a == n.cfg.Gateway {
			return want, invalid(field, a, "the gateway of %s", n.cfg.Subnet)
		}
		if _, ok := n.reserved[a]; ok {
			return want, invalid(field, a, "a reserved address of %s", n.cfg.Subnet)
		}
		if holder, ok := st.byAddr[a]; ok {
			return want, &opError{fmt.Sprintf("allocate %s in pool %s for %s: held by %s", a, st.name, owner, holder), ErrAddrInUse}
		}
		want[f] = a
	}
	return want, nil
}

// next returns the first free address after the cursor of subnet i, which
// must have one, wrapping at the end of the range: released addresses are
// not handed out again until the range has been gone through.
func (st *poolState) next(i int) netip.Addr {
	n := st.subnets[i]
	a := n.first
	if c := st.cursor[i]; c.IsValid() && n.inRange(c) && c != n.last {
		a = c.Next()
	}
	for {
		if _, taken := st.byAddr[a]; !taken && !n.excluded(a) {
			return a
		}
		if a == n.last {
			a = n.first
		} else {
			a = a.Next()
		}
	}
}

// add records the new lease l of owner.
func (st *poolState) add(owner string, l lease) *owned {
	st.index(owner, l)
	o := st.byOwner[owner]
	if o == nil {
		o = &owned{owner: owner}
		st.byOwner[owner] = o
	}
	o.held[family(l.addr)] = l
	return o
}

// revive returns an owned for an owner that holds nothing: the one whose
// key is to be deleted, if it released all since the last write, else a
// spare one (its own, if there).
func (st *poolState) revive(owner string) *owned {
	for i, o := range st.gone {
		if o.owner == owner {
			st.gone = slices.Delete(st.gone, i, i+1)
			return o
		}
	}
	if n := len(st.spare); n > 0 {
		i := n - 1
		for j, o := range st.spare {
			if o.owner == owner {
				i = j
				break
			}
		}
		o := st.spare[i]
		st.spare[i] = st.spare[n-1]
		st.spare[n-1] = nil
		st.spare = st.spare[:n-1]
		if o.owner != owner {
			*o = owned{owner: owner}
		}
		return o
	}
	return &owned{owner: owner}
}

// written records that the changes of st were written at rev.
func (st *poolState) written(rev int64) {
	for _, o := range st.touched {
		if o.live() {
			o.rev = rev
		}
		o.touched = false
	}
	for _, o := range st.gone {
		if len(st.spare) < maxSpare {
			o.rev = 0
			st.spare = append(st.spare, o)
		}
	}
	clear(st.touched)
	clear(st.gone)
	st.touched, st.gone = st.touched[:0], st.gone[:0]
	st.dirty = false
}

// touch records that o's leases changed.
func (st *poolState) touch(o *owned) {
	if !o.touched {
		o.touched = true
		st.touched = append(st.touched, o)
	}
	st.dirty = true
}

// releaseAddr frees the address a, whoever holds it.
func (st *poolState) releaseAddr(a netip.Addr) {
	owner, ok := st.byAddr[a]
	if !ok {
		return
	}
	o := st.byOwner[owner]
	f := family(a)
	st.unindex(o.held[f])
	o.held[f] = lease{}
	st.changed(o)
}

// changed records a change of o's leases: o holds no more, its key (if
// written) is to be deleted.
func (st *poolState) changed(o *owned) {
	st.touch(o)
	if o.live() {
		return
	}
	delete(st.byOwner, o.owner)
	if o.rev != 0 {
		st.gone = append(st.gone, o)
	}
}

// index records the lease l of owner everywhere but in byOwner, which add
// and allocate update with one map write per owner, not per lease (a
// string key to hash).
func (st *poolState) index(owner string, l lease) {
	st.byAddr[l.addr] = owner
	if st.subnets[l.sub].inRange(l.addr) {
		st.used[l.sub]++
	}
}

// unindex undoes index.
func (st *poolState) unindex(l lease) {
	delete(st.byAddr, l.addr)
	if st.subnets[l.sub].inRange(l.addr) {
		st.used[l.sub]--
	}
}

// release frees what owner holds and returns it (for st.allocation, which
// Release has no use for).
func (st *poolState) release(owner string) (held [2]lease, ok bool) {
	o := st.byOwner[owner]
	if o == nil {
		return held, false
	}
	held = o.held
	for _, l := range held {
		if l.addr.IsValid() {
			st.unindex(l)
		}
	}
	o.held = [2]lease{}
	st.changed(o)
	return held, true
}

func (st *poolState) allocation(owner string, held [2]lease) Allocation {
	return allocation(st.name, owner, st.subnets, held)
}

// allocation returns the Allocation of the leases held by owner in pool,
// whose subnets are given: subnets do not change, so it needs no lock on
// the state.
func allocation(pool, owner string, subnets []*subnet, held [2]lease) Allocation {
	a := Allocation{Pool: pool, Owner: owner}
	for f, l := range held {
		if !l.addr.IsValid() {
			continue
		}
		n := subnets[l.sub]
		ls := Lease{
			Addr:    netip.PrefixFrom(l.addr, n.cfg.Subnet.Bits()),
			Gateway: n.cfg.Gateway,
			Static:  l.static,
			Time:    time.Unix(0, l.time).UTC(),
		}
		if f == 0 {
			a.IPv4 = ls
		} else {
			a.IPv6 = ls
		}
	}
	return a
}

func (st *poolState) ownerAddrs(held [2]lease) string {
	s := ""
	for _, l := range held {
		if l.addr.IsValid() {
			if s != "" {
				s += " and "
			}
			s += l.addr.String()
		}
	}
	return s
}

// allocations returns every allocation of the pool, ordered by owner.
func (st *poolState) allocations() []Allocation {
	out := make([]Allocation, 0, len(st.byOwner))
	for owner, o := range st.byOwner {
		out = append(out, st.allocation(owner, o.held))
	}
	slices.SortFunc(out, func(a, b Allocation) int {
		switch {
		case a.Owner < b.Owner:
			return -1
		case a.Owner > b.Owner:
			return 1
		}
		return 0
	})
	return out
}

// The value of a pool's key:
//
//	'P' 2 | pool id | subnet count, the cursor of each subnet
//
// and of an owner's key (the pool's key, "/", the owner):
//
//	'L' 1 | lease count (1 or 2), then per lease: address, flags (1:
//	static), time (unix ns)
//
// with strings as uvarint length + bytes, addresses as a length byte (0,
// 4, 16) + bytes, numbers as uvarints.
const (
	stateVersion = 2
	leaseVersion = 1
)

// encodeMeta returns the value of the pool's key, made again only when a
// cursor moved.
func (st *poolState) encodeMeta() []byte {
	if st.meta != nil {
		return st.meta
	}
	size := 2 + uvarintLen(uint64(len(st.rec.ID))) + len(st.rec.ID) + uvarintLen(uint64(len(st.cursor)))
	for _, c := range st.cursor {
		size += addrLen(c)
	}
	buf := make([]byte, 0, size)
	buf = append(buf, 'P', stateVersion)
	buf = appendString(buf, st.rec.ID)
	buf = binary.AppendUvarint(buf, uint64(len(st.cursor)))
	for _, c := range st.cursor {
		buf = appendAddr(buf, c)
	}
	st.meta = buf
	return buf
}

// encodeOwned returns the value of the key of an owner holding held.
func encodeOwned(held [2]lease) []byte {
	n, size := 0, 3
	for _, l := range held {
		if l.addr.IsValid() {
			n++
			size += addrLen(l.addr) + 1 + uvarintLen(uint64(l.time))
		}
	}
	buf := make([]byte, 0, size)
	buf = append(buf, 'L', leaseVersion, byte(n))
	for _, l := range held {
		if !l.addr.IsValid() {
			continue
		}
		buf = appendAddr(buf, l.addr)
		flags := byte(0)
		if l.static {
			flags = 1
		}
		buf = append(buf, flags)
		buf = binary.AppendUvarint(buf, uint64(l.time))
	}
	return buf
}

// appendString is appendBytes without converting s to a []byte.
func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// addrLen is the length of appendAddr's encoding of a.
func addrLen(a netip.Addr) int {
	switch {
	case !a.IsValid():
		return 1
	case a.Is4():
		return 1 + 4
	default:
		return 1 + 16
	}
}

func appendAddr(buf []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(buf, 0)
	case a.Is4():
		b := a.As4()
		return append(append(buf, 4), b[:]...)
	default:
		b := a.As16()
		return append(append(buf, 16), b[:]...)
	}
}

func (d *decoder) addr() netip.Addr {
	switch n := d.byte(); {
	case d.err != nil || n == 0:
		return netip.Addr{}
	case n == 4 && len(d.buf) >= 4:
		a := netip.AddrFrom4([4]byte(d.buf[:4]))
		d.buf = d.buf[4:]
		return a
	case n == 16 && len(d.buf) >= 16:
		a := netip.AddrFrom16([16]byte(d.buf[:16]))
		d.buf = d.buf[16:]
		return a
	default:
		d.err = errors.New("bad address")
		return netip.Addr{}
	}
}

// stateID returns the pool id a state value starts with.
func stateID(buf []byte) (string, error) {
	if len(buf) < 2 || buf[0] != 'P' || buf[1] != stateVersion {
		return "", errors.New("not a pool state (or of another version)")
	}
	d := decoder{buf: buf[2:]}
	id := d.bytes()
	return string(id), d.err
}

// decodeState decodes the state of the pool rec from the value of its key
// and its owners' keys, which start with ownerPrefix, checking every lease
// against the pool's subnets. An error is a *CorruptError naming the key.
func decodeState(name string, rec *poolRecord, key string, meta []byte, ownerPrefix string, owners []KV) (*poolState, error) {
	corrupt := func(key string, err error) error { return &CorruptError{Key: key, Err: err} }
	id, err := stateID(meta)
	if err != nil {
		return nil, corrupt(key, err)
	}
	if id != rec.ID {
		return nil, corrupt(key, fmt.Errorf("state of pool id %q, index has %q", id, rec.ID))
	}
	st := newPoolState(name, rec)
	d := decoder{buf: meta[2:]}
	d.bytes()
	if n := d.uvarint(); d.err == nil && n != uint64(len(st.cursor)) {
		return nil, corrupt(key, fmt.Errorf("%d cursors for %d subnets", n, len(st.cursor)))
	}
	for i := range st.cursor {
		st.cursor[i] = d.addr()
		if c := st.cursor[i]; d.err == nil && c.IsValid() && !st.subnets[i].cfg.Subnet.Contains(c) {
			return nil, corrupt(key, fmt.Errorf("cursor %s outside subnet %s", c, st.subnets[i].cfg.Subnet))
		}
	}
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d bytes after the last cursor", len(d.buf))
	}
	if d.err != nil {
		return nil, corrupt(key, d.err)
	}
	st.meta = meta
	for _, kv := range owners {
		owner, ok := strings.CutPrefix(kv.Key, ownerPrefix)
		if !ok || owner == "" {
			return nil, corrupt(kv.Key, errors.New("not the key of an owner of the pool"))
		}
		if err := st.decodeOwned(owner, kv); err != nil {
			return nil, corrupt(kv.Key, err)
		}
	}
	for i, n := range st.subnets {
		if st.used[i] > n.capacity {
			return nil, corrupt(key, fmt.Errorf("%d leases in range of %s, more than its %d addresses", st.used[i], n.cfg.Subnet, n.capacity))
		}
	}
	return st, nil
}

// decodeOwned adds the leases of owner, whose key is kv, to st.
func (st *poolState) decodeOwned(owner string, kv KV) error {
	buf := kv.Value
	if len(buf) < 3 || buf[0] != 'L' || buf[1] != leaseVersion || buf[2] < 1 || buf[2] > 2 {
		return errors.New("not the leases of an owner (or of another version)")
	}
	d := decoder{buf: buf[3:]}
	for range buf[2] {
		a := d.addr()
		flags := d.byte()
		t := d.uvarint()
		if d.err != nil {
			return d.err
		}
		s := st.subnetOf(a)
		_, leased := st.byAddr[a]
		switch {
		case s < 0 || st.subnets[s].checkHost(a) != "" || a == st.subnets[s].cfg.Gateway:
			return fmt.Errorf("lease of %s, not a host address of the pool", a)
		case leased:
			return fmt.Errorf("address %s leased twice", a)
		case st.byOwner[owner] != nil && st.byOwner[owner].held[family(a)].addr.IsValid():
			return fmt.Errorf("owner %q holds two addresses of a family", owner)
		case flags > 1:
			return fmt.Errorf("bad flags %d", flags)
		}
		o := st.add(owner, lease{addr: a, sub: s, static: flags == 1, time: int64(t)})
		o.rev, o.key = kv.Rev, kv.Key
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%d bytes after the last lease", len(d.buf))
	}
	return nil
}

// opError is an error of an Allocator method: what it did, and a sentinel.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string {
	msg := e.err.Error()
	if s, ok := e.err.(*sentinel); ok {
		msg = s.msg
	}
	return "ipam: " + e.op + ": " + msg
}

func (e *opError) Unwrap() error { return e.err }
