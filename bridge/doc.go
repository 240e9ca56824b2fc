// Package bridge builds Docker-style bridge networks on one host: what
// `docker network create/connect/disconnect/inspect/rm` do for the bridge
// driver, as typed calls that act in a namespace the caller names.
//
// A network is a Linux bridge with the gateway addresses of its subnets
// ([New]); a container joins it through a veth pair whose host end is a
// port of the bridge and whose container end is created in the container's
// namespace as eth0 ([Network.Attach]); [Network.Detach] takes it away
// again, leaving the container's other networks alone. Containers on
// different networks of one host cannot reach each other, although the host
// routes both subnets (isolation rules in nsnet's nftables table); internal
// networks forward nothing beyond their bridge; DisableICC keeps a network's
// containers apart. [None], [HostMode] and [Join] give the three
// `--network` modes that are not a network.
//
// Outbound NAT and published ports are not this package's: see nat and
// portmap, which take a network's bridge and subnets.
//
// # Namespaces
//
// New, Open, List and a Network's methods act in the host namespace they
// were given; Attach also acts in EndpointConfig.NS, the container's. No
// call depends on the calling thread's namespace.
//
// # State and restarts
//
// Everything a later process needs is in the kernel and the allocator: the
// bridge and the host-side veths carry nsnet's marks (their interface alias
// names the network, the endpoint, the container's interface and MAC), and
// the addresses are the allocator's. A new process finds a network with
// [Open] or [List], inspects its endpoints and detaches those an earlier
// process attached. Host-side veth names are derived from the network and
// endpoint names, so Detach needs neither a listing nor the container's
// namespace.
//
// # Crashes, drift and recovery
//
// Every link the package makes is nsnet's from the moment it exists: the
// request that creates a bridge or a veth pair gives it nsnet's device
// group (IFLA_GROUP, a tag and a hash of its owner; see `ip link show
// group`), because the kernel ignores an interface alias in that request.
// The alias (the mark naming the network or endpoint) follows in a second
// request. A process killed in between leaves a link with the group and no
// mark: New and Attach of its owner complete or replace it, Detach and
// Delete remove it, GC removes it. A network's pool is made after its
// bridge and deleted before it, so no pool outlives the bridge by which a
// later process finds the network.
//
// New and Attach of what exists check it and repair what drifted (the
// pool, the bridge's addresses, MTU, STP, up, the isolation rules; the
// port, hairpin, isolation and up of a host veth; the container's
// addresses, up and default route; an allocation lost behind nsnet's back,
// made again with the interface's addresses). [Network.Check] and
// [Network.CheckEndpoint] report the same without changing anything, as CNI
// CHECK does: a *DriftError that names each missing bridge, pool, address,
// route, port, rule, up, interface or allocation.
//
// The recovery of a restarted orchestrator, once per host, with what it
// still has (its networks, its containers' endpoints):
//
//	// 1. Remove what no live owner claims, and what killed calls left.
//	_, err := bridge.GC(ctx, host, alloc, bridge.Live{Networks: names, Endpoints: eps})
//	// 2. Make each live network whole again (repairs drift, idempotent).
//	for _, cfg := range networks {
//		n, err := bridge.New(ctx, host, alloc, cfg)
//		// 3. The same for each live endpoint of it.
//		for _, ep := range endpointsOf(cfg.Name) {
//			_, err = n.Attach(ctx, ep)
//		}
//	}
//
// A call that was not acknowledged (the process died in it) is not live:
// re-issue it after the recovery. GC also removes what nsnet's nftables
// tables hold for bridges and host veths that are gone (a process killed
// between deleting a bridge and its isolation entries, or a link deleted
// behind nsnet's back). The tests kill a child process at every step of
// New, Attach, Detach and Delete and at random instants within each
// (seeded; more than 100 kills) and check that after this recipe the
// kernel, the nftables tables and the store hold exactly the
// acknowledged state.
//
// # Idempotency
//
// New and Attach return what exists when it has the settings asked for
// (repaired, see above), and fail with ErrExists when it has others.
// Detach and Delete succeed for what is gone, also when the container
// namespace, the veth or the bridge already went. A failure half way
// undoes what was done: no veth is left, and the addresses are released.
//
// # Privileges
//
// CAP_NET_ADMIN in the host and in the container namespaces.
//
// # Concurrency
//
// A Network is safe for concurrent use: Attach and Detach of different
// endpoints may run at once (the tests attach 200 containers concurrently).
// New, Delete, Attach and Detach are serialised where they must be, across
// goroutines and processes, by lock files (flock) under /run/nsnet/locks
// (or a temporary directory the user may write; $NSNET_LOCK_DIR chooses
// another, and nstest points it at a directory of the test run): a host's lock (shared;
// GC's is exclusive), a network's (exclusive for New and Delete, shared
// for Attach and Detach) and an endpoint's (a byte-range lock within the
// network's file, so that no file is made or removed per endpoint), each
// held from the check to the act. Two processes creating one network both get it; a Delete that
// comes while an attach of the network is half way waits for it (and then
// fails with ErrInUse without force); an Attach that comes while the
// network is being deleted waits, then fails with ErrNotFound.
// Two attaches of one container to two networks at the same moment may
// both choose eth0, and one then fails: attach a container's networks one
// after the other, or give EndpointConfig.IfName.
//
// # Performance
//
// Measured on the project's 2-core machine, as root:
//
//	go test -run '^$' -bench 'Attach$|Detach' -benchtime 300x -count 3 -benchmem ./bridge/
//
// Before issue 15's lifecycle work (no locks, guard or announcement):
//
//	BenchmarkAttach   0.90-1.35 ms/op   51 KB/op   424 allocs/op
//	BenchmarkDetach   0.70-0.75 ms/op   12 KB/op   102 allocs/op
//
// With it, at load average 1-2: Attach 1.62 ms, Detach 1.45 ms (100 KB,
// 852 allocs; 69 KB, 612 allocs). Issue 19's work took out what was not
// the kernel's: an endpoint's lock is a part of its network's lock file
// (three lock files with an endpoint's made and removed per call took
// 0.25 ms on this machine's ext4, the three locks now 14-28 µs: -bench
// Nested ./internal/keylock/); the veth's mark and its port in one
// request, the port's sysctl, hairpin, isolation and up from one thread
// switch and one request, the container's three sysctls from one thread
// switch; the port's guard in one nftables request that reads nothing,
// made while the kernel wires the port; the wait for the port to forward
// on the bridge's own announcement instead of a poll that switched
// threads and opened a socket each time. Detach looks up the endpoint's
// names before deleting (a lookup after it waited for the kernel's rtnl
// lock), deletes on the socket that hears the deletion, and forgets the
// guard by the keys it was given (no reads of the sets: they grow with
// the ports). Detach is 29 KB and 298 allocs, Attach 111 KB and 771.
//
// The figures could only be taken while the other helpers' suites loaded
// the machine (load average 5-17), the code before and after in turns,
// 300 operations each, medians of the operations (ns/op-median; the
// means, ns/op, followed a few operations that waited long for a CPU):
//
//	                 before          after           lock change alone
//	run 1 (load 12-17)
//	Attach           1.73-1.90 ms    1.79-4.38 ms
//	Detach           1.43-2.28 ms    1.36-1.40 ms
//	AttachDetach     3.01-3.63 ms    3.17-5.24 ms
//	run 2 (load 5-9)
//	Attach           1.75-2.35 ms    1.95-2.76 ms    1.64-1.75 ms
//	Detach           1.41-1.76 ms    1.23-2.10 ms
//	AttachDetach     3.59-4.19 ms    3.18-4.58 ms    2.97-3.54 ms
//
// What these show: the endpoint's lock without a file of its own saves
// 0.5-0.7 ms of a cycle; the fewer requests are within the noise of a
// loaded machine, and Attach pays for part of the preceding Detach: what
// is left of a detach is the kernel's, the veth pair's unregistration
// (see linkdel), of which a part runs after Delete returned, still under
// the rtnl lock, and delays the next request. Detach no longer waits for
// it (a lookup after the deletion did), the next Attach does
// (BenchmarkAttachDetach counts a whole cycle). Issue 19's goal (Attach
// 1.35 ms, Detach 0.75 ms) is not shown on this machine.
//
// Detach then removed the port's guard only once the kernel announced the
// veth gone, 0.9-1.0 ms after the request; the kernel announces it down
// (stopped, both ends, nothing in flight) 0.25-0.4 ms after it, and the
// guard may go from then on: linkdel.DeleteThen runs the guard's removal
// (0.13 ms) there, while the kernel finishes. On an idle machine, in turn
// with the code before, 300 operations each, medians (2026-12-07):
//
//	                 before          after
//	Detach           0.92-1.02 ms    0.86-0.95 ms
//	AttachDetach     2.66-3.10 ms    2.69-2.84 ms
//	Attach           1.78-1.95 ms    1.85-1.93 ms
//
// The announcing socket is closed in the background: its close waits for
// an RCU grace period, and an attach that waited for it took 12-18 ms.
//
//	go test -run '^$' -bench Attach500 -benchtime 2x -count 2 ./bridge/
//	BenchmarkAttach500   first 100: 1.22-1.38 ms/attach   last 100: 1.48-1.70 ms/attach
//
// Attach is the veth pair created in place (0.6 ms, see veth), the port
// wiring and the container's addresses and routes. Detach returns when the
// kernel has taken both ends of the pair out (see veth.Delete), not after
// it has freed them 16-19 ms later (RCU grace periods; a Detach that
// waited for that took 18.4-18.8 ms).
//
// Nothing nsnet does per attach walks the existing endpoints: the host
// veth is found by its derived name, the IPAM commit is per pool. What
// grows a little with hundreds of ports is in the kernel's bridge (adding a
// port recomputes features, MTU and promiscuity over all ports: +0.8 ms at
// 500 ports in a step-by-step measurement) and in the IPAM's pool record
// (+0.17 ms at 500 allocations). Endpoint interfaces get no IPv6 unless the
// network has an IPv6 subnet, as in Docker: before that change, each new
// port's IPv6 link-local traffic was flooded to every other port and the
// last 100 of 500 attaches took 3.0 ms.
package bridge
