package portmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/nsnet/nsnet/internal/nft"
	"github.com/nsnet/nsnet/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mapper publishes ports in one host namespace and holds their
// reservations. Safe for concurrent use.
type Mapper struct {
	host *netns.NS
	cfg  Config

	mu       sync.Mutex
	reserved map[resKey]io.Closer
	// index holds the host's mappings by protocol, family and port: read
	// from the table once, then kept by Add and Remove, so that checking a
	// new mapping for conflicts costs the same at 10 mappings and at
	// 10,000. Nil: to be read again (after a failure, or a conflict that
	// another Mapper's reservation revealed).
	index map[portKey][]nft.Mapping
	// ct is the ctnetlink socket in the host namespace, opened on first
	// use (see conntrack_linux.go).
	ct *ctSocket
	// ctNoFlush: the kernel has no filtered conntrack flush (before 6.12).
	ctNoFlush bool
	// drain reads what reaches the reservation sockets (reserve_linux.go).
	drain drainer
	// stepHook is a test's: called at each step of a call (see step).
	stepHook nft.StepFunc
}

// portKey is what overlapping mappings share.
type portKey struct {
	proto uint8
	v6    bool
	port  uint16
}

func keyOf(e nft.Mapping) portKey { return portKey{e.Proto, e.CtrAddr.Is6(), e.HostPort} }

// load reads the index from the table if it is not there.
func (mp *Mapper) load(ctx context.Context) error {
	if mp.index != nil {
		return nil
	}
	have, err := nft.Mappings(ctx, mp.host)
	if err != nil {
		return err
	}
	mp.index = map[portKey][]nft.Mapping{}
	for _, e := range have {
		mp.index[keyOf(e)] = append(mp.index[keyOf(e)], e)
	}
	return nil
}

// conflict returns the element of the index that overlaps n but is not
// n, and whether n itself is there.
func (mp *Mapper) conflict(n nft.Mapping) (other nft.Mapping, found, same bool) {
	for _, e := range mp.index[keyOf(n)] {
		if overlaps(e, n) {
			if e != n {
				return e, true, false
			}
			same = true
		}
	}
	return nft.Mapping{}, false, same
}

// indexAdd and indexRemove keep the index after a change to the table.
func (mp *Mapper) indexAdd(elems []nft.Mapping) {
	if mp.index == nil {
		return
	}
	for _, e := range elems {
		k := keyOf(e)
		mp.index[k] = append(slices.DeleteFunc(mp.index[k], func(h nft.Mapping) bool { return h.HostAddr == e.HostAddr }), e)
	}
}

func (mp *Mapper) indexRemove(elems []nft.Mapping) {
	if mp.index == nil {
		return
	}
	for _, e := range elems {
		k := keyOf(e)
		if mp.index[k] = slices.DeleteFunc(mp.index[k], func(h nft.Mapping) bool { return h.HostAddr == e.HostAddr }); len(mp.index[k]) == 0 {
			delete(mp.index, k)
		}
	}
}

// resKey is one reserved host port.
type resKey struct {
	proto uint8
	addr  netip.Addr // the zero Addr of the family: every address
	v6    bool
	port  int
}

// New returns a Mapper for host. Errors: *ValidationError for a nil host
// or a bad Config.
func New(host *netns.NS, cfg Config) (*Mapper, error) {
	if host == nil {
		return nil, invalid("host", nil, "no namespace")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.EphemeralPorts == [2]int{} {
		cfg.EphemeralPorts = [2]int{32768, 60999}
	}
	return &Mapper{host: host, cfg: cfg, reserved: map[resKey]io.Closer{}}, nil
}

// ErrNoMapper: a method was called on a nil Mapper or one not made by New.
var ErrNoMapper error = invalid("Mapper", nil, "nil or zero Mapper (make it with New)")

func (mp *Mapper) ok() error {
	if mp == nil || mp.host == nil || mp.reserved == nil {
		return ErrNoMapper
	}
	return nil
}

// elems are the table elements of m, one per port.
func (m Mapping) elems() []nft.Mapping {
	out := make([]nft.Mapping, m.length())
	for i := range out {
		out[i] = nft.Mapping{Proto: protos[m.proto()], HostAddr: m.HostAddr, HostPort: uint16(m.HostPort + i),
			CtrAddr: m.CtrAddr, CtrPort: uint16(m.CtrPort + i), ID: m.ID}
	}
	return out
}

func (m Mapping) resKeys() []resKey {
	out := make([]resKey, m.length())
	for i := range out {
		out[i] = resKey{protos[m.proto()], m.HostAddr, m.CtrAddr.Is6(), m.HostPort + i}
	}
	return out
}

// overlaps reports whether an existing element e and a new one n catch the
// same packets: same protocol, port and family, and the same host address
// or either on every address.
func overlaps(e, n nft.Mapping) bool {
	return e.Proto == n.Proto && e.HostPort == n.HostPort && e.CtrAddr.Is4() == n.CtrAddr.Is4() &&
		(e.HostAddr == n.HostAddr || !e.HostAddr.IsValid() || !n.HostAddr.IsValid())
}

// Add publishes m: it reserves the host ports, deletes the conntrack
// entries that would still send their packets elsewhere, and adds m's
// elements in one nftables transaction. HostPort 0 picks a free ephemeral
// port; Add returns m with it. Adding a mapping that exists, the same in
// every field, returns it. Errors: *ValidationError; ErrConflict if a port
// is published for an overlapping address; ErrPortInUse if a program of the
// host holds it.
func (mp *Mapper) Add(ctx context.Context, m Mapping) (Mapping, error) {
	out, err := mp.addAll(ctx, []Mapping{m})
	var be *BatchError
	if errors.As(err, &be) {
		return Mapping{}, be.Err
	}
	if err != nil {
		return Mapping{}, err
	}
	return out[0], nil
}

// AddAll publishes ms as Add does, all or none: their reservations in one
// pass, their conntrack cleanup in one (a filtered dump per family where
// they are many), their elements in one nftables transaction. If one
// mapping is bad, conflicts (with the host's mappings or another of ms) or
// cannot be reserved, nothing is published, every reservation AddAll took
// is released, and the error is a *BatchError that names it and wraps the
// error Add would return (errors.Is(err, ErrConflict) works). It returns
// ms with their ephemeral ports, in order.
func (mp *Mapper) AddAll(ctx context.Context, ms []Mapping) ([]Mapping, error) {
	return mp.addAll(ctx, ms)
}

func (mp *Mapper) addAll(ctx context.Context, ms []Mapping) ([]Mapping, error) {
	if err := mp.ok(); err != nil {
		return nil, err
	}
	ms = slices.Clone(ms)
	checked := map[netip.Addr]bool{}
	for i := range ms {
		if err := ms[i].Validate(); err != nil {
			return nil, &BatchError{i, ms[i], err}
		}
		ms[i].Proto = ms[i].proto()
		if a := ms[i].HostAddr; !checked[a] {
			if err := mp.hostHas(a); err != nil {
				return nil, &BatchError{i, ms[i], err}
			}
			checked[a] = true
		}
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if err := mp.load(ctx); err != nil {
		return nil, err
	}
	i, err := mp.add(ctx, ms)
	if errors.Is(err, ErrPortInUse) {
		// Held by a program, or by another Mapper's reservation for a
		// mapping this one has not seen: read the table again to tell.
		mp.index = nil
		if lerr := mp.load(ctx); lerr != nil {
			return nil, errors.Join(err, lerr)
		}
		if m := ms[max(i, 0)]; i >= 0 && m.HostPort != 0 {
			for _, n := range m.elems() {
				if e, found, _ := mp.conflict(n); found {
					err = fmt.Errorf("%w: %s %d (held by %q)", ErrConflict, m.Proto, n.HostPort, e.ID)
				}
			}
		}
	}
	if err != nil && i >= 0 {
		return nil, &BatchError{i, ms[i], err}
	}
	if err != nil {
		return nil, err
	}
	return ms, nil
}

// add publishes ms (picking their ephemeral ports in place) and returns,
// on failure, the index of the mapping at fault (-1: none in particular).
// The index holds ms's elements as they are checked, so that each is
// checked against the others too; on failure it is read again. The
// reservations are taken once every mapping is checked, in one pass.
func (mp *Mapper) add(ctx context.Context, ms []Mapping) (int, error) {
	var fresh []Mapping
	fail := func(i int, err error) (int, error) {
		mp.index = nil
		return i, err
	}
	for i := range ms {
		m := &ms[i]
		if m.HostPort == 0 {
			picked, err := mp.pick(*m)
			if err != nil {
				return fail(i, err)
			}
			*m = picked
		} else {
			same := 0
			for _, n := range m.elems() {
				e, found, there := mp.conflict(n)
				if found {
					return fail(i, fmt.Errorf("%w: %s %d (held by %q)", ErrConflict, m.Proto, n.HostPort, e.ID))
				}
				if there {
					same++
				}
			}
			if same == m.length() { // there already: make sure of its reservation
				continue
			}
		}
		mp.indexAdd(m.elems())
		fresh = append(fresh, *m)
	}
	took, i, err := mp.reserveAll(ms)
	if err != nil {
		return fail(i, err)
	}
	if len(fresh) == 0 {
		return -1, nil
	}
	if err := mp.publish(ctx, fresh); err != nil {
		mp.releaseKeys(took)
		return fail(-1, err)
	}
	return -1, nil
}

// pick finds a free ephemeral port for m and reserves nothing yet.
func (mp *Mapper) pick(m Mapping) (Mapping, error) {
	lo, hi := mp.cfg.EphemeralPorts[0], mp.cfg.EphemeralPorts[1]
	n := hi - lo + 1
	start := rand.IntN(n)
	for i := range n {
		m.HostPort = lo + (start+i)%n
		if _, found, same := mp.conflict(m.elems()[0]); found || same {
			continue
		}
		if _, held := mp.reserved[m.resKeys()[0]]; held {
			continue
		}
		if took, err := mp.reserve(m); err == nil {
			mp.releaseKeys(took) // add reserves it again, with the others
			return m, nil
		}
	}
	return m, ErrExhausted
}

// publish adds the elements of ms, then deletes the conntrack entries
// that would still send packets for them elsewhere; after a failed
// transaction it reads the table back, since the kernel may have applied a
// batch reported as failed. The order is what a crash or a packet in
// between needs:
//
//   - the elements before the conntrack cleanup: a packet that comes
//     between them makes an entry with the DNAT (with the cleanup first, it
//     would make a stale one again);
//   - the table's record of the interfaces that get route_localnet (and
//     with it the table's guard) before route_localnet is turned on, so
//     that it is never on without the guard, even if the process dies in
//     between.
//
// A failure after the transaction takes the elements out again.
func (mp *Mapper) publish(ctx context.Context, ms []Mapping) error {
	var elems, udp []nft.Mapping
	v4, v6 := false, false
	var loopback []netip.Addr
	for _, m := range ms {
		elems = append(elems, m.elems()...)
		// A UDP client that sent to the port before the mapping existed
		// has a conntrack entry without DNAT that would keep its packets
		// from the container; TCP has none to fear, as the port was free
		// (reserved).
		if m.Proto == "udp" {
			udp = append(udp, m.elems()...)
		}
		v4, v6 = v4 || m.CtrAddr.Is4(), v6 || m.CtrAddr.Is6()
		if m.coversLoopback() && !slices.Contains(loopback, m.CtrAddr) {
			loopback = append(loopback, m.CtrAddr)
		}
	}
	mp.step("reserve")
	for _, f := range []struct{ on, v6 bool }{{v4, false}, {v6, true}} {
		if f.on {
			if err := mp.forwarding(f.v6); err != nil {
				return err
			}
		}
	}
	mp.step("forwarding")
	lnets := mp.localnetLinks(loopback)
	nctx := ctx
	if mp.stepHook != nil {
		nctx = nft.WithStep(ctx, mp.stepHook)
	}
	if err := nft.AddMappings(nctx, mp.host, elems, lnets...); err != nil {
		have, rerr := nft.Mappings(context.WithoutCancel(ctx), mp.host)
		if rerr != nil || !contains(have, elems) {
			return err
		}
	}
	mp.step("nft")
	undo := func(err error) error {
		return errors.Join(err, mp.remove(context.WithoutCancel(ctx), elems))
	}
	if err := mp.setLocalnet(lnets, true); err != nil {
		return undo(err)
	}
	mp.step("localnet")
	if err := mp.forget(udp, false); err != nil {
		return undo(err)
	}
	mp.step("conntrack")
	return nil
}

// step calls the test's hook, if any, with the step of a call that is
// done (SetStep in export_linux_test.go).
func (mp *Mapper) step(name string) {
	if mp.stepHook != nil {
		mp.stepHook(name)
	}
}

func contains(have, want []nft.Mapping) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// forwarding turns on IPv4 (or IPv6) forwarding in the host namespace, as
// dockerd does: a DNATed packet is forwarded to the container. It reads the
// sysctl first, so that a host where it is on already sees no write.
func (mp *Mapper) forwarding(v6 bool) error {
	key := "net.ipv4.ip_forward"
	if v6 {
		key = "net.ipv6.conf.all.forwarding"
	}
	if v, err := mp.host.Sysctl(key); err == nil && v == "1" {
		return nil
	}
	return mp.host.SetSysctl(key, "1")
}

// coversLoopback reports whether m catches packets for 127.0.0.1.
func (m Mapping) coversLoopback() bool { return coversLoopback(m.HostAddr, m.CtrAddr) }

// coversLoopback reports whether a mapping on host (the zero Addr: every
// address) to the IPv4 container ctr catches packets for 127.0.0.1.
func coversLoopback(host, ctr netip.Addr) bool {
	return ctr.Is4() && (!host.IsValid() || host.IsLoopback())
}

// linkTo returns the interface the host routes ctr out of, nil if none.
func (mp *Mapper) linkTo(ctr netip.Addr) netlink.Link { return linkTo(mp.host, ctr) }

func linkTo(host *netns.NS, ctr netip.Addr) netlink.Link {
	h, err := host.Netlink()
	if err != nil {
		return nil
	}
	routes, err := h.RouteGet(ctr.AsSlice())
	if err != nil || len(routes) == 0 {
		return nil
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil
	}
	return l
}

// localnetLinks returns the interfaces towards the containers ctrs (of
// mappings that cover 127.0.0.1): those that packets from 127.0.0.1 DNATed
// to them leave through, and that need route_localnet for it.
func (mp *Mapper) localnetLinks(ctrs []netip.Addr) []string {
	var names []string
	for _, ctr := range ctrs {
		l := mp.linkTo(ctr)
		if l == nil {
			continue // no route to the container (yet): nothing to do
		}
		if name := l.Attrs().Name; !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// setLocalnet turns route_localnet on (or off) for the interfaces names,
// in the host namespace. nsnet's table drops packets for 127.0.0.0/8 that
// did not come in on lo, which is what makes it safe: the table records
// the interfaces first, and stays while the record has one.
func (mp *Mapper) setLocalnet(names []string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	for _, name := range names {
		if err := mp.host.SetSysctl("net/ipv4/conf/"+name+"/route_localnet", v); err != nil {
			return err
		}
	}
	return nil
}

// unLocalnet returns the interfaces whose route_localnet the removal of
// gone leaves without a mapping that needs it: the interfaces towards the
// containers of gone's mappings that cover 127.0.0.1, when no mapping of
// the index that covers 127.0.0.1 has its container behind them.
func (mp *Mapper) unLocalnet(gone []nft.Mapping) []string {
	var ctrs []netip.Addr
	for _, e := range gone {
		if coversLoopback(e.HostAddr, e.CtrAddr) && e.CtrAddr.IsValid() &&
			!e.CtrAddr.IsUnspecified() && !slices.Contains(ctrs, e.CtrAddr) {
			ctrs = append(ctrs, e.CtrAddr)
		}
	}
	links := map[int]string{}
	for _, ctr := range ctrs {
		if l := mp.linkTo(ctr); l != nil {
			links[l.Attrs().Index] = l.Attrs().Name
		}
	}
	if len(links) == 0 {
		return nil
	}
	routes, err := mp.host.Routes(netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	behind := map[int][]netip.Prefix{}
	for _, r := range routes {
		if _, ok := links[r.LinkIndex]; ok && r.Dst != nil {
			if p, ok := netipx(r.Dst); ok {
				behind[r.LinkIndex] = append(behind[r.LinkIndex], p)
			}
		}
	}
scan:
	for _, es := range mp.index {
		for _, e := range es {
			if len(behind) == 0 {
				break scan // every interface is still needed
			}
			if !coversLoopback(e.HostAddr, e.CtrAddr) {
				continue
			}
			for i, ps := range behind {
				if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(e.CtrAddr) }) {
					delete(links, i) // still needed
					delete(behind, i)
				}
			}
		}
	}
	var out []string
	for _, name := range links {
		out = append(out, name)
	}
	return out
}

// unLocalnets turns route_localnet off on the interfaces that the removal
// of gone leaves without a mapping that needs it, if nsnet turned it on,
// and returns the interfaces to take off the table's record: those, and
// those that no longer exist.
func (mp *Mapper) unLocalnets(ctx context.Context, gone []nft.Mapping) ([]string, error) {
	if !slices.ContainsFunc(gone, func(e nft.Mapping) bool {
		return coversLoopback(e.HostAddr, e.CtrAddr)
	}) {
		return nil, nil
	}
	rec, err := nft.Localnet(ctx, mp.host)
	if err != nil || len(rec) == 0 {
		return nil, err
	}
	h, err := mp.host.Netlink()
	if err != nil {
		return nil, err
	}
	var out []string
	names := mp.unLocalnet(gone)
	for _, r := range rec {
		var notFound netlink.LinkNotFoundError
		if _, err := h.LinkByName(r); errors.As(err, &notFound) {
			out = append(out, r) // gone with its link
		} else if slices.Contains(names, r) {
			if err := mp.host.SetSysctl("net/ipv4/conf/"+r+"/route_localnet", "0"); err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func netipx(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// forget deletes the conntrack entries of the UDP and SCTP elements that
// are addressed to the host (see conntrackFilters), in one pass.
func (mp *Mapper) forget(elems []nft.Mapping, removing bool) error {
	var fs []ctFilter
	local := map[bool]map[netip.Addr]bool{}
	for _, e := range elems {
		if e.Proto == unix.IPPROTO_TCP {
			continue
		}
		v6 := e.CtrAddr.Is6()
		if !e.HostAddr.IsValid() && local[v6] == nil {
			var err error
			if local[v6], err = mp.localAddrs(v6); err != nil {
				return err
			}
		}
		fs = append(fs, conntrackFilters(e, removing, local[v6])...)
	}
	return mp.ctForget(fs)
}

// conntrackFilters select the conntrack entries of e's host port that are
// addressed to the host, never wider, so that a container's own traffic to
// the same port of another machine keeps its entries: by protocol and
// port, and by e's host address, or for a mapping on every address, on
// Remove by the DNAT to e's container (the entries of the mapping), else
// by each local address of the family (an entry to the host from before
// the mapping). The kernel selects them: the cost does not grow with the
// number of entries it copies out. Only UDP and SCTP need it (see doc.go,
// Conntrack).
func conntrackFilters(e nft.Mapping, removing bool, local map[netip.Addr]bool) []ctFilter {
	f := ctFilter{v6: e.CtrAddr.Is6(), proto: e.Proto, dst: e.HostAddr, port: e.HostPort}
	if e.HostAddr.IsValid() {
		return []ctFilter{f}
	}
	if removing && !e.CtrAddr.IsUnspecified() {
		f.ctr = netip.AddrPortFrom(e.CtrAddr, e.CtrPort)
		return []ctFilter{f}
	}
	fs := make([]ctFilter, 0, len(local))
	for a := range local {
		f.dst = a
		fs = append(fs, f)
	}
	return fs
}

// localAddrs returns the host's addresses of a family.
func (mp *Mapper) localAddrs(v6 bool) (map[netip.Addr]bool, error) {
	fam := netlink.FAMILY_V4
	if v6 {
		fam = netlink.FAMILY_V6
	}
	addrs, err := mp.host.Addrs(nil, fam)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

// Remove unpublishes m (by protocol, host address and ports; the other
// fields need not match): its elements go, then its conntrack entries, so
// a running UDP stream stops reaching the old container, then its
// reservations. A mapping that is not there is no error.
func (mp *Mapper) Remove(ctx context.Context, m Mapping) error {
	err := mp.RemoveAll(ctx, []Mapping{m})
	var be *BatchError
	if errors.As(err, &be) {
		return be.Err
	}
	return err
}

// RemoveAll unpublishes ms as Remove does, in one nftables transaction
// and one conntrack cleanup. A bad mapping fails it with a *BatchError
// before anything is touched.
func (mp *Mapper) RemoveAll(ctx context.Context, ms []Mapping) error {
	if err := mp.ok(); err != nil {
		return err
	}
	var want []nft.Mapping
	for i, m := range ms {
		m.Proto = m.proto()
		if _, ok := protos[m.Proto]; !ok {
			return &BatchError{i, m, invalid("Proto", m.Proto, "not tcp, udp or sctp")}
		}
		if m.HostPort < 1 || m.HostPort > 65535 || m.HostPortEnd > 65535 || m.HostPortEnd != 0 && m.HostPortEnd < m.HostPort {
			return &BatchError{i, m, invalid("HostPort", m.HostPort, "not a port or range of ports")}
		}
		if !m.CtrAddr.IsValid() {
			m.CtrAddr = netip.IPv4Unspecified()
			if m.HostAddr.Is6() {
				m.CtrAddr = netip.IPv6Unspecified()
			}
		}
		want = append(want, m.elems()...)
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if err := mp.load(ctx); err != nil {
		return err
	}
	return mp.remove(ctx, want)
}

// RemoveOwner unpublishes every mapping whose ID is id, as RemoveAll does.
// An empty id is refused: it would name every mapping without one.
func (mp *Mapper) RemoveOwner(ctx context.Context, id string) error {
	if err := mp.ok(); err != nil {
		return err
	}
	if id == "" {
		return invalid("ID", id, "empty")
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if err := mp.load(ctx); err != nil {
		return err
	}
	var want []nft.Mapping
	for _, es := range mp.index {
		for _, e := range es {
			if e.ID == id {
				want = append(want, e)
			}
		}
	}
	return mp.remove(ctx, want)
}

// remove unpublishes the elements want (by protocol, host address and
// port). Call with mp.mu held and the index loaded.
func (mp *Mapper) remove(ctx context.Context, want []nft.Mapping) error {
	if len(want) == 0 {
		return nil
	}
	// The elements as the index has them (with their containers), then
	// route_localnet off where no mapping left needs it, before the
	// table (and the guard with it) may go.
	var gone, forget []nft.Mapping
	for _, n := range want {
		found := n // not in the table: its container is not known
		for _, e := range mp.index[keyOf(n)] {
			if e.HostAddr == n.HostAddr {
				gone = append(gone, e)
				found = e
			}
		}
		forget = append(forget, found)
	}
	mp.indexRemove(gone)
	lnets, err := mp.unLocalnets(ctx, gone)
	if err != nil {
		mp.index = nil
		return err
	}
	mp.step("localnet-off")
	if err := nft.RemoveMappings(ctx, mp.host, want, lnets...); err != nil {
		mp.index = nil
		return err
	}
	mp.step("nft")
	for _, n := range want {
		mp.releaseKeys([]resKey{{n.Proto, n.HostAddr, n.CtrAddr.Is6(), int(n.HostPort)}})
	}
	mp.step("release")
	// TCP needs no conntrack work (forget skips it): see doc.go, Conntrack.
	if err := mp.forget(forget, true); err != nil {
		return err
	}
	mp.step("conntrack")
	return nil
}

// List reads the mappings back from the table, one per port, ordered by
// protocol, host address and port.
func (mp *Mapper) List(ctx context.Context) ([]Mapping, error) {
	if err := mp.ok(); err != nil {
		return nil, err
	}
	return List(ctx, mp.host)
}

// List reads the mappings of host back from nsnet's table, one per port.
func List(ctx context.Context, host *netns.NS) ([]Mapping, error) {
	if host == nil {
		return nil, invalid("host", nil, "no namespace")
	}
	elems, err := nft.Mappings(ctx, host)
	if err != nil {
		return nil, err
	}
	return toMappings(elems), nil
}

// Reserve takes the reservations of mappings that exist already, for a
// process that restarted and found them with List.
func (mp *Mapper) Reserve(m Mapping) error {
	if err := mp.ok(); err != nil {
		return err
	}
	if err := m.Validate(); err != nil {
		return err
	}
	m.Proto = m.proto()
	mp.mu.Lock()
	defer mp.mu.Unlock()
	_, err := mp.reserve(m)
	return err
}

// Close releases every reservation. The mappings stay.
func (mp *Mapper) Close() error {
	if err := mp.ok(); err != nil {
		return err
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	for k, c := range mp.reserved {
		c.Close()
		delete(mp.reserved, k)
	}
	mp.ctClose()
	return mp.drain.close()
}

// reserve holds a socket on each host port of m that is not held yet and
// returns the ports it took; on failure it releases them.
func (mp *Mapper) reserve(m Mapping) ([]resKey, error) {
	took, _, err := mp.reserveAll([]Mapping{m})
	return took, err
}

// reserveAll holds a socket on each host port of ms that is not held yet,
// opening them all on one thread that it switches into the host namespace
// once, and returns the ports it took. On failure it releases them and
// returns the index of the mapping whose port failed.
func (mp *Mapper) reserveAll(ms []Mapping) ([]resKey, int, error) {
	type want struct {
		k resKey
		i int
	}
	var ws []want
	seen := map[resKey]bool{}
	for i, m := range ms {
		for _, k := range m.resKeys() {
			if _, held := mp.reserved[k]; !held && !seen[k] {
				seen[k] = true
				ws = append(ws, want{k, i})
			}
		}
	}
	if len(ws) == 0 {
		return nil, -1, nil
	}
	opened := make([]io.Closer, 0, len(ws))
	bad := -1
	err := mp.host.Do(func() error {
		for j, w := range ws {
			c, err := mp.openReservation(w.k)
			if err != nil {
				bad = j
				return err
			}
			opened = append(opened, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range opened {
			if c != nil {
				c.Close()
			}
		}
		if bad < 0 {
			return nil, -1, err
		}
		w := ws[bad]
		if errors.Is(err, syscall.EADDRINUSE) {
			err = fmt.Errorf("%w: %s port %d: %v", ErrPortInUse, ms[w.i].Proto, w.k.port, err)
		}
		return nil, w.i, err
	}
	var took []resKey
	for j, c := range opened {
		if c != nil {
			mp.reserved[ws[j].k] = c
			took = append(took, ws[j].k)
		}
	}
	return took, -1, nil
}

func (mp *Mapper) releaseKeys(keys []resKey) {
	for _, k := range keys {
		if c, ok := mp.reserved[k]; ok {
			c.Close()
			delete(mp.reserved, k)
		}
	}
}

// hostHas checks that the host has addr (the zero Addr: yes).
func (mp *Mapper) hostHas(addr netip.Addr) error {
	if !addr.IsValid() || addr.IsLoopback() && addr.Is4() {
		return nil
	}
	fam := netlink.FAMILY_V4
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := mp.host.Addrs(nil, fam)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == addr {
			return nil
		}
	}
	return invalid("HostAddr", addr, "not an address of the host")
}
