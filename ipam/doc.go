// Package ipam manages the addresses of container networks with Docker's
// semantics: pools of IPv4 and IPv6 subnets (dual stack), gateways, ip-ranges
// and reserved addresses; the next free subnet from default pools
// (172.17.0.0/16 to 172.31.0.0/16, then 192.168.0.0/16 as /20s); addresses
// handed out once, idempotently per owner, continuing after the last one
// handed out; static addresses (`docker run --ip`) that stay reserved for
// their owner until released on purpose; garbage collection of owners that
// are gone. It never touches the kernel.
//
// An Allocator keeps its state in a Store. Three come with the package, and
// an Allocator behaves the same on each:
//
//	// Tests, and programs whose addresses need not outlive them.
//	a, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
//
//	// One machine, the embedded default: a directory ("" is
//	// /var/lib/nsnet) that several processes may use at once.
//	st, err := ipam.OpenFileStore("/var/lib/mynet")
//	defer st.Close()
//	a, err := ipam.New(st, ipam.Config{})
//
//	// Several hosts allocating from the same pools: etcd, in its own
//	// package (ipam/etcdstore) so that only programs that use it link
//	// the etcd client.
//	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}})
//	defer c.Close()
//	st, err := etcdstore.New(c, "/mynet/")
//	a, err := ipam.New(st, ipam.Config{})
//
// Then, as `docker network create` and `docker run` would:
//
//	p, err := a.CreatePool(ctx, ipam.PoolConfig{Name: "mynet"}) // 172.18.0.0/16 after docker0's 172.17.0.0/16
//	al, err := a.Allocate(ctx, "mynet", containerID+"/eth0")     // 172.18.0.2/16, gateway 172.18.0.1
//	err = a.Release(ctx, "mynet", containerID+"/eth0")
//
// # Durability and concurrency
//
// Allocate and Release return when their change is durable in the store.
// Concurrent calls on one pool are committed together, one store write for
// many callers. Allocators in several processes (file store) or on several
// hosts (etcd) never hand out one address twice: every write is a
// compare-and-swap on the revision of the pool's key, retried on conflict.
//
// A pool is kept as one key for the pool (ipam/pool/NAME: its id and the
// cursors of its subnets) and one key per owner (ipam/pool/NAME/OWNER: the
// owner's addresses). A write changes the pool's key, which every write
// compares, and the keys of the owners it changed: its cost does not grow
// with the pool. (A store written by an earlier version, one value for a
// whole pool, reads as a *CorruptError naming the pool's key.)
//
// The file store writes each batch of changes as an entry of a log and
// fdatasyncs it before the calls return, and folds the log into a snapshot
// when it is full (a megabyte, or the snapshot's size). A process killed,
// or a machine that lost power, at any point leaves every acknowledged
// allocation in place; a damaged snapshot or log is a *CorruptError naming
// the file, never a silent reset or loss. See FileStore.
//
// # Crashes and recovery
//
// A call that returned without error is durable; a call cut short (the
// process killed in it) is either done or not done, never half: each
// Allocate, Release, CreatePool and DeletePool is one compare-and-swap
// of the store, and the file store writes it as one checksummed log entry
// (or a snapshot renamed into place). The recovery of a restarted
// program, which knows which calls it saw answered:
//
//	st, err := ipam.OpenFileStore(dir) // damage is a *CorruptError, never a reset
//	a, err := ipam.New(st, ipam.Config{})
//	// Give up what no live owner holds, such as an allocation whose
//	// Allocate was never answered.
//	for _, p := range pools {
//		_, err = a.GC(ctx, p, func(owner string) bool { return live[owner] })
//	}
//	// Re-issue the calls that were cut short (all are idempotent):
//	// CreatePool, DeletePool, Allocate (same addresses), Release.
//
// The tests kill a child process (SIGKILL) at every step of the file
// store's writes (the lock taken, a log entry written, synced; a
// snapshot's or a new log's temporary file written, synced, renamed, the
// directory synced) and at random moments, more than a hundred times while
// it creates and deletes pools and allocates and releases, and check
// after each that this recovery leaves exactly what the answered calls
// made, the call cut short done or not; and the same at random moments on
// the etcd store, against a real server (100 kills, most inside a call).
//
// # A lost or reset store
//
// The allocator never touches the kernel: a store that was lost or reset
// (a deleted directory, a new etcd prefix) knows nothing of the addresses
// containers still hold, and would hand them out again. nsnet's network
// drivers keep their own record in the kernel of the host and check what
// the allocator hands out against it before an interface gets it: bridge
// on each endpoint's host veth, macvlan on the network's anchor (both as
// alternative interface names, see their docs). An address a live
// endpoint holds is then never handed to another endpoint of the host:
// it goes back to its holder in the store, and the allocation is tried
// again; the holder's own Attach makes its allocation again too (and
// macvlan's New those of all the network's endpoints at once). Programs
// that use this package alone keep such a record themselves, or give GC
// and static addresses the live set after a reset.
//
// # Speed
//
// Allocate + Release of one owner, both durable where the store is, on a
// 2-core VM with an ext4 disk and etcd 3.7 on loopback
// (go test -run '^$' -bench AllocateRelease -benchmem ./ipam/; the Fill
// benchmarks first fill a /16 to 1%, 50% or 99% of its 65,533 addresses):
//
//	store   pool filled  callers  allocate+release per second
//	memory  1 owner      1        790,000 to 990,000 (1.0 to 1.3 µs, 2 allocations)
//	memory  1 owner      8        630,000 to 680,000
//	memory  1%           1        800,000 to 930,000
//	memory  50%          1        315,000 to 350,000
//	memory  99%          1         73,000 to  79,000 (the search for a free address)
//	file    1 owner      1        1,960 to 2,000 (0.5 ms: two entries, two fdatasyncs)
//	file    1 owner      8        8,240 to 8,290 (fdatasyncs shared)
//	file    50%          8        6,560
//	file    99%          8        4,840
//	etcd    1 owner      1        470 to 570 (two transactions)
//	etcd    1 owner      8        1,130 to 1,720
//	etcd    1% to 99%    1        340 to 570
//	etcd    1% to 99%    8        1,100 to 1,720
//
// These are the best of runs on a VM that other jobs kept busy (load
// average 9 to 19 on 2 cores, the disk shared): the same runs of the
// previous version, which wrote a whole pool per change, gave 0.94 to 2.4
// µs (memory), 250 to 535 (file, 1 caller), 1,950 to 2,300 (file, 8) and
// 240 to 350 (etcd, 1) per second. The file store's figures follow the
// disk's fdatasync latency, which varied from 0.25 to 1.7 ms during the
// runs; in a full pool they are those of an empty one within that noise,
// where the previous version managed 288 per second at 32,000 addresses.
// A write costs what it changes: the pool's key (whose value is made
// again only when a cursor moved), the keys of the owners changed, and
// for the file store one log entry of about 100 bytes per CAS. The memory
// store's CPU time per pair is that of the previous version (0.88 µs in
// pprof samples), though it writes two keys per change instead of one. In
// a pool filled to 99%, the next free address after the last one handed
// out is far away once the cursor wraps; that search, which Docker's
// allocator makes too, is what the 99% figures measure. A caller that
// finds no commit running commits its request itself, without a lock;
// callers that find one running queue and share the next write.
package ipam
