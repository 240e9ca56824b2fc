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
// compare-and-swap on the pool's revision, retried on conflict.
//
// The file store appends each change to a log and fdatasyncs it before the
// call returns, and folds the log into a snapshot every megabyte. A process
// killed at any point leaves every acknowledged allocation in place; a
// damaged snapshot or log is a *CorruptError naming the file, never a
// silent reset. See FileStore.
//
// # Speed
//
// Allocate + Release of one owner, both durable where the store is, on a
// 2-core VM with an ext4 disk and etcd 3.7 on loopback
// (go test -run '^$' -bench AllocateRelease -benchmem -count 3 ./ipam/):
//
//	store    callers  allocate+release per second
//	memory   1        1,120,000 to 1,170,000 (0.86 to 0.89 µs, 2 allocations)
//	memory   8          670,000 to   770,000 (the pool holds 8 owners: see below)
//	file     1        2,300 (0.43 ms: two appends, two fdatasyncs)
//	file     8        9,900 to 10,100 (fdatasyncs shared)
//	etcd     1        770 to 790 (1.3 ms: two transactions)
//	etcd     8        3,500 to 3,600
//
// Every write encodes the pool's whole state, so a write costs about 30 ns
// more per address the pool has handed out: with one caller and 7 other
// owners in the pool, a pair takes 1.3 µs, the same as 8 callers each
// holding one; with 100, 6.9 µs. A caller that finds no commit running
// commits its request itself, without a lock or an allocation; callers
// that find one running queue and share the next write. With etcd one
// caller is bound by etcd itself: a bare transaction (compare and put)
// takes 0.58 ms on this machine, an Allocate 0.63 ms; that is 1,580
// durable allocations per second.
package ipam
