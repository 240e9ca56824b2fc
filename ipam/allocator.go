package ipam

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nsnet/nsnet/internal/ipnet"
)

// Config configures an Allocator. The zero value is useful: Docker's default
// pools, keys under "ipam/".
type Config struct {
	// DefaultPools are where pools without subnets get one from, tried in
	// order. Nil: DockerDefaultPools().
	DefaultPools []DefaultPool
	// Prefix starts every key the allocator writes to its store; "" means
	// "ipam/". Allocators with different prefixes on one store are
	// independent address spaces.
	Prefix string
}

// Allocator hands out addresses from pools kept in a Store. Several
// Allocators (in one process, in several processes on one file store, on
// several hosts on one etcd) may share a store: every change is a
// compare-and-swap, so none hands out an address another has handed out.
//
// An Allocator is safe for concurrent use. Concurrent calls on one pool are
// committed together, in one store write.
type Allocator struct {
	store      Store
	defaults   []DefaultPool
	indexKey   string
	poolPrefix string // + pool name: the pool's key; + "/" + owner: an owner's

	// Pool name to *poolHandle: written once per pool, then only read, by
	// every call, which sync.Map does without a lock.
	pools sync.Map
}

// usable returns a *ValidationError for a nil or zero Allocator.
func (a *Allocator) usable() error {
	if a == nil || a.store == nil {
		return invalid("Allocator", nil, "a nil or zero Allocator: get one from New")
	}
	return nil
}

// Allocation is what an owner holds in a pool: one address of each IP
// family the pool has (a dual-stack pool gives both).
type Allocation struct {
	Pool  string
	Owner string
	IPv4  Lease // the zero Lease if the pool has no IPv4 subnet
	IPv6  Lease // the zero Lease if the pool has no IPv6 subnet
}

// Lease is one address of an Allocation.
type Lease struct {
	Addr    netip.Prefix // the address with its subnet's length: 172.18.0.2/16
	Gateway netip.Addr   // the subnet's gateway
	Static  bool         // asked for by address
	Time    time.Time    // when it was allocated
}

// IsValid reports whether l holds an address.
func (l Lease) IsValid() bool { return l.Addr.IsValid() }

// Leases returns the valid leases of a: IPv4 first.
func (a Allocation) Leases() []Lease {
	var ls []Lease
	for _, l := range [2]Lease{a.IPv4, a.IPv6} {
		if l.IsValid() {
			ls = append(ls, l)
		}
	}
	return ls
}

// Pool is a pool as created: its subnets with their gateways filled in.
type Pool struct {
	Name    string
	ID      string // random, new each time a pool of this name is created
	Subnets []SubnetConfig
	Created time.Time
}

// New returns an Allocator that keeps its state in store. It returns a
// *ValidationError if cfg's default pools are not valid.
func New(store Store, cfg Config) (*Allocator, error) {
	if store == nil {
		return nil, invalid("store", nil, "no Store: use NewMemoryStore, OpenFileStore or etcdstore.New")
	}
	defaults := cfg.DefaultPools
	if defaults == nil {
		defaults = DockerDefaultPools()
	}
	for i, d := range defaults {
		if !d.Base.IsValid() || d.Base.Masked() != d.Base || d.Size < d.Base.Bits() || d.Size > d.Base.Addr().BitLen()-2 {
			return nil, invalid(fmt.Sprintf("Config.DefaultPools[%d]", i), fmt.Sprintf("%s/%d", d.Base, d.Size),
				"needs a valid network address and a size between its length and the longest usable prefix")
		}
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = "ipam/"
	}
	return &Allocator{
		store:      store,
		defaults:   slices.Clone(defaults),
		indexKey:   prefix + "pools",
		poolPrefix: prefix + "pool/",
	}, nil
}

// poolHandle is what an Allocator keeps per pool: the batch of requests
// waiting to be committed and the last state it read or wrote.
type poolHandle struct {
	name        string
	key         string // the pool's key
	ownerPrefix string // key + "/": its owners' keys start with it
	g           *group[poolReq]
	commit      func(context.Context, []*call[poolReq]) // a.commit on this pool

	// Used by the goroutine holding g.sem only.
	st  *poolState // nil: read it again
	rev int64      // of the pool's key
	ops []Op       // the CAS's argument, kept so that it is not allocated per commit
}

// poolReq is one request on a pool: it reads or changes the state and
// changes nothing if it fails. Allocate and Release, the hot path, are
// plain values: as closures they would cost an allocation per call, and
// Allocate's captured result another. Other requests are a function, fn.
type poolReq struct {
	kind   reqKind
	owner  string       // reqAllocate, reqRelease
	static []netip.Addr // reqAllocate
	now    int64        // reqAllocate: the leases' time
	res    allocResult  // reqAllocate: the result
	fn     func(st *poolState) error
}

// allocResult is what an allocate request hands back: Allocate makes the
// Allocation from it after the commit, outside the pool's lock, and it is
// smaller than an Allocation to allocate.
type allocResult struct {
	held    [2]lease
	subnets []*subnet // the state's, which do not change
}

type reqKind uint8

const (
	reqFunc reqKind = iota
	reqAllocate
	reqRelease
)

// apply runs r on the state of the pool (st nil: it does not exist).
func (r *poolReq) apply(pool string, st *poolState) error {
	switch r.kind {
	case reqAllocate:
		if st == nil {
			return notFound("allocate", pool)
		}
		held, err := st.allocate(r.owner, r.static, r.now)
		r.res = allocResult{held, st.subnets}
		return err
	case reqRelease:
		if st != nil {
			st.release(r.owner)
		}
		return nil
	}
	return r.fn(st)
}

func (a *Allocator) handle(pool string) *poolHandle {
	if h, ok := a.pools.Load(pool); ok {
		return h.(*poolHandle)
	}
	key := a.poolPrefix + pool
	h := &poolHandle{name: pool, key: key, ownerPrefix: key + "/", g: newGroup[poolReq]()}
	h.commit = func(ctx context.Context, calls []*call[poolReq]) { a.commit(ctx, h, calls) }
	// If another caller stored one first, use it: every caller on a pool
	// must share its handle.
	got, _ := a.pools.LoadOrStore(pool, h)
	return got.(*poolHandle)
}

// do runs req on the pool's current state, batched with concurrent
// requests, and writes the state if req changed it. It returns req as it
// ran (with its result) and req's error or the store's.
func (a *Allocator) do(ctx context.Context, pool string, req poolReq) (poolReq, error) {
	h := a.handle(pool)
	return h.g.do(ctx, req, h.commit)
}

// doFunc is do with a request that is a function.
func (a *Allocator) doFunc(ctx context.Context, pool string, fn func(st *poolState) error) error {
	_, err := a.do(ctx, pool, poolReq{kind: reqFunc, fn: fn})
	return err
}

func (a *Allocator) commit(ctx context.Context, h *poolHandle, calls []*call[poolReq]) {
	fail := func(err error) {
		for _, c := range calls {
			c.err = err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			fail(err)
			return
		}
		cached := h.st != nil
		if !cached {
			h.ops = h.ops[:0]
			if err := a.load(ctx, h); err != nil {
				fail(err)
				return
			}
		}
		if h.st == nil { // no such pool
			for _, c := range calls {
				c.err = c.req.apply(h.name, nil)
			}
			return
		}
		st := h.st
		st.dirty = false
		for _, c := range calls {
			c.err = c.req.apply(h.name, st)
		}
		if !st.dirty {
			if cached {
				// Answers from a cached state hold only if it is current.
				kv, err := a.store.Get(ctx, h.key)
				if err != nil && !errors.Is(err, ErrNotFound) {
					fail(err)
					return
				}
				if kv.Rev != h.rev {
					h.st = nil
					continue
				}
			}
			return
		}
		ops := a.changes(h, st)
		rev, err := a.store.CAS(ctx, ops...)
		if err != nil {
			clear(ops)
			h.st = nil
			if errors.Is(err, ErrConflict) {
				continue
			}
			// Nothing the batch decided holds: its answers were computed
			// together with changes that were not written.
			fail(err)
			return
		}
		h.rev = rev
		clear(ops)
		st.written(rev)
		return
	}
}

// changes returns the CAS that writes the changes of st: the pool's key,
// at the revision read, and the keys of the owners whose leases changed.
func (a *Allocator) changes(h *poolHandle, st *poolState) []Op {
	ops := append(h.ops[:0], Op{Key: h.key, Rev: h.rev, Value: st.encodeMeta()})
	for _, o := range st.touched {
		if !o.live() {
			continue // in st.gone if its key is to be deleted
		}
		if o.key == "" {
			o.key = h.ownerPrefix + o.owner
		}
		ops = append(ops, Op{Key: o.key, Rev: o.rev, Value: encodeOwned(o.held)})
	}
	for _, o := range st.gone {
		ops = append(ops, Op{Key: o.key, Rev: o.rev, Delete: true})
	}
	h.ops = ops
	return ops
}

// load reads the pool's state (h.st nil: no such pool): its key, then its
// owners' keys, then its key again, to see that no change came between.
func (a *Allocator) load(ctx context.Context, h *poolHandle) error {
	var orphan int64 // revision of a state key the index did not know of
	for {
		kv, err := a.store.Get(ctx, h.key)
		if errors.Is(err, ErrNotFound) {
			h.st, h.rev = nil, 0
			return nil
		}
		if err != nil {
			return err
		}
		id, err := stateID(kv.Value)
		if err != nil {
			return &CorruptError{Key: h.key, Err: err}
		}
		rec := (*poolRecord)(nil)
		if h.st != nil && h.st.rec.ID == id {
			rec = h.st.rec
		} else {
			idx, _, err := a.index(ctx)
			if err != nil {
				return err
			}
			rec = idx[h.name]
			if rec == nil || rec.ID != id {
				if kv.Rev == orphan {
					// Twice the same state the index does not know of: a
					// leftover, not a pool (CreatePool replaces it).
					h.st, h.rev = nil, 0
					return nil
				}
				// Read between a delete and a create: read both again.
				orphan = kv.Rev
				continue
			}
		}
		owners, _, err := a.store.List(ctx, h.ownerPrefix)
		if err != nil {
			return err
		}
		again, err := a.store.Get(ctx, h.key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if again.Rev != kv.Rev {
			continue // changed meanwhile
		}
		st, err := decodeState(h.name, rec, h.key, kv.Value, h.ownerPrefix, owners)
		if err != nil {
			return err
		}
		h.st, h.rev = st, kv.Rev
		return nil
	}
}

// index reads the pools' records and the index's revision (0: none yet).
func (a *Allocator) index(ctx context.Context) (map[string]*poolRecord, int64, error) {
	kv, err := a.store.Get(ctx, a.indexKey)
	if errors.Is(err, ErrNotFound) {
		return map[string]*poolRecord{}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var idx map[string]*poolRecord
	if err := json.Unmarshal(kv.Value, &idx); err != nil {
		return nil, 0, &CorruptError{Key: a.indexKey, Err: err}
	}
	if idx == nil {
		idx = map[string]*poolRecord{}
	}
	return idx, kv.Rev, nil
}

// CreatePool creates a pool, like `docker network create --subnet ...
// --gateway ... --ip-range ...`. With no Subnets it picks the first subnet
// of the default pools that overlaps no pool's subnet, no route of
// cfg.Avoid and none of cfg.AvoidPrefixes (ErrExhausted if none is left).
//
// A pool that exists with the same settings (or any settings, if cfg gives
// no subnets) is returned as it is; with other settings CreatePool returns
// an error matching ErrExists. Bad settings, and subnets overlapping another
// pool's (matching ErrOverlap), give a *ValidationError before anything is
// written.
func (a *Allocator) CreatePool(ctx context.Context, cfg PoolConfig) (Pool, error) {
	if err := a.usable(); err != nil {
		return Pool{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Pool{}, err
	}
	want := make([]SubnetConfig, len(cfg.Subnets))
	for i, sc := range cfg.Subnets {
		want[i], _ = sc.normalize("")
	}
	var avoid []netip.Prefix
	if len(want) == 0 {
		avoid = slices.Clone(cfg.AvoidPrefixes)
		if cfg.Avoid != nil {
			routes, err := cfg.Avoid.RoutePrefixes(ctx)
			if err != nil {
				return Pool{}, fmt.Errorf("ipam: create pool %s: read routes to avoid: %w", cfg.Name, err)
			}
			for _, r := range routes {
				if r.IsValid() && r.Bits() > 0 { // default routes overlap everything
					avoid = append(avoid, r)
				}
			}
		}
	}
	for {
		idx, rev, err := a.index(ctx)
		if err != nil {
			return Pool{}, err
		}
		if rec := idx[cfg.Name]; rec != nil {
			if len(want) == 0 || slices.EqualFunc(want, rec.Subnets, SubnetConfig.equal) {
				return poolOf(cfg.Name, rec), nil
			}
			return Pool{}, &opError{fmt.Sprintf("create pool %s: exists with subnets %s", cfg.Name, subnetList(rec.Subnets)), ErrExists}
		}
		subnets := want
		if len(subnets) == 0 {
			p, ok := a.pick(idx, avoid)
			if !ok {
				return Pool{}, &opError{fmt.Sprintf("create pool %s: no free subnet in the default pools", cfg.Name), ErrExhausted}
			}
			sc, _ := SubnetConfig{Subnet: p}.normalize("")
			subnets = []SubnetConfig{sc}
		} else if err := overlaps(idx, subnets); err != nil {
			return Pool{}, err
		}
		rec := &poolRecord{ID: newID(), Subnets: subnets, Created: time.Now().UTC().Truncate(time.Second)}
		idx[cfg.Name] = rec
		index, err := json.Marshal(idx)
		if err != nil {
			return Pool{}, err
		}
		// State keys the index does not know of are leftovers: replace
		// them.
		key := a.poolPrefix + cfg.Name
		var stRev int64
		if kv, err := a.store.Get(ctx, key); err == nil {
			stRev = kv.Rev
		} else if !errors.Is(err, ErrNotFound) {
			return Pool{}, err
		}
		owners, _, err := a.store.List(ctx, key+"/")
		if err != nil {
			return Pool{}, err
		}
		ops := []Op{
			{Key: a.indexKey, Rev: rev, Value: index},
			{Key: key, Rev: stRev, Value: newPoolState(cfg.Name, rec).encodeMeta()},
		}
		for _, kv := range owners {
			ops = append(ops, Op{Key: kv.Key, Rev: kv.Rev, Delete: true})
		}
		_, err = a.store.CAS(ctx, ops...)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return Pool{}, fmt.Errorf("ipam: create pool %s: %w", cfg.Name, err)
		}
		return poolOf(cfg.Name, rec), nil
	}
}

// pick returns the first subnet of the default pools that overlaps no pool
// and nothing in avoid.
func (a *Allocator) pick(idx map[string]*poolRecord, avoid []netip.Prefix) (netip.Prefix, bool) {
	var taken []netip.Prefix
	for _, rec := range idx {
		for _, sc := range rec.Subnets {
			taken = append(taken, sc.Subnet)
		}
	}
	taken = append(taken, avoid...)
	for _, d := range a.defaults {
		p := netip.PrefixFrom(d.Base.Addr(), d.Size)
		for d.Base.Contains(p.Addr()) {
			free := true
			for _, t := range taken {
				if t.Overlaps(p) {
					free = false
					break
				}
			}
			if free {
				return p, true
			}
			next := ipnet.Last(p).Next()
			if !next.IsValid() {
				break
			}
			p = netip.PrefixFrom(next, d.Size)
		}
	}
	return netip.Prefix{}, false
}

func overlaps(idx map[string]*poolRecord, subnets []SubnetConfig) error {
	names := make([]string, 0, len(idx))
	for n := range idx {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, sc := range subnets {
		for _, n := range names {
			for _, o := range idx[n].Subnets {
				if o.Subnet.Overlaps(sc.Subnet) {
					return &ValidationError{Pkg: "ipam",
						Field:  fmt.Sprintf("PoolConfig.Subnets[%d].Subnet", i),
						Value:  sc.Subnet.String(),
						Reason: fmt.Sprintf("overlaps %s of pool %s", o.Subnet, n),
						Err:    ErrOverlap,
					}
				}
			}
		}
	}
	return nil
}

func poolOf(name string, rec *poolRecord) Pool {
	p := Pool{Name: name, ID: rec.ID, Created: rec.Created, Subnets: slices.Clone(rec.Subnets)}
	for i := range p.Subnets {
		p.Subnets[i].Reserved = slices.Clone(p.Subnets[i].Reserved)
	}
	return p
}

func subnetList(scs []SubnetConfig) string {
	s := ""
	for i, sc := range scs {
		if i > 0 {
			s += ", "
		}
		s += sc.Subnet.String()
	}
	return s
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// DeletePool deletes a pool that has no allocations, like `docker network
// rm`. A pool that still has allocations gives an error matching ErrInUse;
// a pool that does not exist is no error.
func (a *Allocator) DeletePool(ctx context.Context, pool string) error {
	if err := a.usable(); err != nil {
		return err
	}
	for {
		idx, rev, err := a.index(ctx)
		if err != nil {
			return err
		}
		rec := idx[pool]
		if rec == nil {
			return nil
		}
		key := a.poolPrefix + pool
		kv, err := a.store.Get(ctx, key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if err == nil {
			if id, err := stateID(kv.Value); err != nil {
				return &CorruptError{Key: key, Err: err}
			} else if id != rec.ID {
				continue // read between a delete and a create
			}
			// An allocation after this List changes the pool's key: the
			// CAS below, which compares it, fails then.
			owners, _, err := a.store.List(ctx, key+"/")
			if err != nil {
				return err
			}
			if n := len(owners); n > 0 {
				return &opError{fmt.Sprintf("delete pool %s: %d owners hold addresses", pool, n), ErrInUse}
			}
		}
		delete(idx, pool)
		index, err := json.Marshal(idx)
		if err != nil {
			return err
		}
		_, err = a.store.CAS(ctx, Op{Key: a.indexKey, Rev: rev, Value: index}, Op{Key: key, Rev: kv.Rev, Delete: true})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("ipam: delete pool %s: %w", pool, err)
		}
		return nil
	}
}

// Pools returns every pool, ordered by name.
func (a *Allocator) Pools(ctx context.Context) ([]Pool, error) {
	if err := a.usable(); err != nil {
		return nil, err
	}
	idx, _, err := a.index(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Pool, 0, len(idx))
	for name, rec := range idx {
		out = append(out, poolOf(name, rec))
	}
	slices.SortFunc(out, func(x, y Pool) int {
		if x.Name < y.Name {
			return -1
		}
		if x.Name > y.Name {
			return 1
		}
		return 0
	})
	return out, nil
}

func validOwner(owner string) error {
	if owner == "" || len(owner) > 1024 {
		return invalid("owner", owner, "must be 1 to 1024 bytes long")
	}
	return nil
}

func notFound(op, pool string) error {
	return &opError{fmt.Sprintf("%s: pool %s", op, pool), ErrNotFound}
}

// Allocate gives owner an address of each IP family of the pool and returns
// them with their prefix lengths and gateways. The change is durable when
// Allocate returns.
//
// An owner (a container ID and interface, say) that already holds addresses
// in the pool gets the same ones back. Static addresses, at most one per
// family, are handed out as asked for (`docker run --ip`); the other
// families get the next free address after the one handed out last,
// wrapping at the end of the subnet's ip-range, so an address just released
// is not handed out again at once.
//
// Errors: a *ValidationError for a bad owner, or a static address that is
// not a host address of a subnet of the pool or is its gateway or reserved;
// ErrAddrInUse if another owner holds the static address; ErrExists if the
// owner holds another address than the static one asked for; ErrExhausted
// if a family has no free address left; ErrNotFound if there is no such
// pool. If ctx ends first, the allocation may still have been made: call
// Allocate again (it returns the same addresses) or Release.
func (a *Allocator) Allocate(ctx context.Context, pool, owner string, static ...netip.Addr) (Allocation, error) {
	if err := a.usable(); err != nil {
		return Allocation{}, err
	}
	if err := validOwner(owner); err != nil {
		return Allocation{}, err
	}
	req, err := a.do(ctx, pool, poolReq{kind: reqAllocate, owner: owner, static: static, now: time.Now().UnixNano()})
	if err != nil {
		return Allocation{}, err
	}
	return allocation(pool, owner, req.res.subnets, req.res.held), nil
}

// Release frees every address owner holds in the pool, static ones too
// (like `docker rm` of the container). An owner that holds none, or a pool
// that does not exist, is no error.
func (a *Allocator) Release(ctx context.Context, pool, owner string) error {
	if err := a.usable(); err != nil {
		return err
	}
	_, err := a.do(ctx, pool, poolReq{kind: reqRelease, owner: owner})
	return err
}

// ReleaseAddr frees one address of the pool, whoever holds it. An address
// that nobody holds, or a pool that does not exist, is no error.
func (a *Allocator) ReleaseAddr(ctx context.Context, pool string, addr netip.Addr) error {
	if err := a.usable(); err != nil {
		return err
	}
	addr = addr.Unmap()
	return a.doFunc(ctx, pool, func(st *poolState) error {
		if st != nil {
			st.releaseAddr(addr)
		}
		return nil
	})
}

// Inspect returns the pool and every allocation in it, ordered by owner. It
// returns an error matching ErrNotFound if there is no such pool.
func (a *Allocator) Inspect(ctx context.Context, pool string) (Pool, []Allocation, error) {
	if err := a.usable(); err != nil {
		return Pool{}, nil, err
	}
	var p Pool
	var allocs []Allocation
	err := a.doFunc(ctx, pool, func(st *poolState) error {
		if st == nil {
			return notFound("inspect", pool)
		}
		p = poolOf(pool, st.rec)
		allocs = st.allocations()
		return nil
	})
	if err != nil {
		return Pool{}, nil, err
	}
	return p, allocs, nil
}

// GC releases the allocations of every owner for which live returns false,
// and returns them: given the live containers, it frees what crashed or
// forgotten ones left behind. live is called
// without any lock held. A pool that does not exist is no error.
func (a *Allocator) GC(ctx context.Context, pool string, live func(owner string) bool) ([]Allocation, error) {
	if err := a.usable(); err != nil {
		return nil, err
	}
	if live == nil {
		return nil, invalid("live", nil, "no function to tell live owners")
	}
	_, allocs, err := a.Inspect(ctx, pool)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dead := make(map[string]bool)
	for _, al := range allocs {
		if !live(al.Owner) {
			dead[al.Owner] = true
		}
	}
	if len(dead) == 0 {
		return nil, nil
	}
	var released []Allocation
	err = a.doFunc(ctx, pool, func(st *poolState) error {
		released = released[:0]
		if st == nil {
			return nil
		}
		for o := range dead {
			if held, ok := st.release(o); ok {
				released = append(released, st.allocation(o, held))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(released, func(x, y Allocation) int {
		if x.Owner < y.Owner {
			return -1
		}
		if x.Owner > y.Owner {
			return 1
		}
		return 0
	})
	return released, nil
}
