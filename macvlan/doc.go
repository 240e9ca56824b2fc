// Package macvlan puts containers straight on a host's physical network:
// what `docker network create/connect/disconnect/inspect/rm` do for the
// macvlan driver, as typed calls that act in a namespace the caller names.
//
// A network sits on a parent interface of the host ([New]); each container
// gets a macvlan interface on that parent with a MAC of its own, created
// directly in the container's namespace ([Network.Attach]), so that other
// machines on the parent's segment reach it without NAT, and containers on
// other hosts' networks on the same segment reach each other.
// [Network.Detach] takes the interface away again.
//
// The modes ([Mode]) say how containers on one parent reach each other:
// bridge (the default) directly, private not at all, vepa only through a
// switch that sends frames back, and passthru gives one container the
// parent whole.
//
// Plain macvlan has a limit no option removes: the host cannot reach its own
// containers through the parent (the kernel hands nothing from a parent to
// the macvlans on it, nor back). [Network.AddShim] gives the host a macvlan
// interface of its own on the parent, with an address and routes to its
// containers, the workaround of the macvlan guides. Egress beyond the
// segment's router, and access from the host without a shim, come from
// attaching the container to a bridge network as well (see bridge and nat).
//
// # Namespaces
//
// New, Open, List and a Network's methods act in the host namespace they
// were given; Attach and Detach also act in the container's namespace. No
// call depends on the calling thread's namespace: the container's
// interface is created by a request sent through the host's netlink handle
// that names the parent in the host and the container's namespace
// (IFLA_NET_NS_FD), so no interface of a container ever appears in the host,
// not even for a moment.
//
// # State and restarts
//
// A macvlan network has no device of its own in the kernel, so nsnet makes
// one: the network's anchor ([AnchorName]), a macvlan interface on the
// parent in the host, down, whose interface alias carries nsnet's mark (the
// network's name, mode and labels); its parent and MTU are the network's.
// The anchor doubles as the host's shim when one is asked for. A passthru
// network's anchor is a passthru macvlan: it holds the parent for the
// network while it has no container, so that no other network can take it,
// and makes way for the container's interface. Subnets and endpoints are
// the allocator's: every endpoint owns its addresses in the pool
// "macvlan."+Name, so a later process lists a network's endpoints with
// [Open] and [Network.Inspect]. Container interfaces carry a mark of their
// own (network and endpoint), by which Detach finds them in the container's
// namespace.
//
// # Crashes, drift and recovery
//
// As in package bridge: the anchor and every container interface carry
// nsnet's device group from the request that creates them (the kernel
// ignores an alias there), so one that a killed call left before its mark
// is adopted or removed by the next New, Attach, Detach or Delete of its
// owner, or by [GC], which takes what is live and removes the rest
// (networks, half-made anchors, the interfaces in the live containers'
// namespaces that no live endpoint owns, pools and allocations, and the
// anchor's records of endpoints that are not live). A network's pool is
// made after its anchor and deleted before it. New and Attach repair what
// drifted (a lost pool, the container's addresses, up, default route, an
// allocation lost behind nsnet's back); [Network.Check] and
// [Network.CheckEndpoint] report it as a *DriftError without changing
// anything.
//
// The recovery of a restarted orchestrator, once per host, with what it
// still has (its networks, its containers' endpoints):
//
//	// 1. Remove what no live owner claims, and what killed calls left.
//	_, err := macvlan.GC(ctx, host, alloc, macvlan.Live{Networks: names, Endpoints: eps})
//	// 2. Make each live network whole again (repairs drift, idempotent).
//	for _, cfg := range networks {
//		n, err := macvlan.New(ctx, host, alloc, cfg)
//		// 3. The same for each live endpoint of it.
//		for _, ep := range endpointsOf(cfg.Name) {
//			_, err = n.Attach(ctx, ep)
//		}
//	}
//
// A call that was not acknowledged (the process died in it) is not live:
// re-issue it after the recovery. The tests kill a child process at every
// step of New, Attach, Detach and Delete, and at random moments of them
// (110 kills), and check that after this recipe the kernel and the store
// hold exactly the acknowledged state, and that attaching again gives
// working endpoints.
//
// # Addresses the kernel knows
//
// The IPAM store may be lost or reset (a deleted file, a new etcd prefix)
// while containers still hold its addresses. The kernel keeps its own
// record: a container's interface lives only in the container's namespace,
// where a later process cannot look without knowing it, so the network's
// anchor in the host carries, as alternative interface names
// (IFLA_ALT_IFNAME; `ip link show` lists them as altname), one record per
// address an endpoint holds: "ADDR@ID" (the shim's ID is ".shim"). Attach
// adds them before the container's interface has the addresses, Detach
// removes them, GC removes those of endpoints that are not live, and they
// go with the anchor, that is with the network. What this guarantees:
//
//   - An address that an attached endpoint holds is never handed to
//     another endpoint of the host, whatever the store says: Attach checks
//     what the allocator hands out against the records, gives a recorded
//     address back to its holder in the store (its allocation made again
//     with the addresses recorded for it) and allocates again; a static
//     address that another endpoint holds fails with ipam.ErrAddrInUse.
//   - New of a network that exists makes the allocations that the records
//     name and the store lost again (with the pool, if that was lost too),
//     so Inspect lists the endpoints at once; the idempotent Attach of an
//     endpoint makes its own again as well.
//
// Its limits: the records are the host's, so hosts that share a segment
// but not an allocator still need static addresses (see EndpointConfig);
// the kernel allows about 495 alternative names on a link, so a network
// records at most 495 addresses per host (247 dual-stack endpoints), and
// an attach beyond fails with ipam.ErrExhausted; a passthru network keeps
// no records (it has one container, and the kernel refuses any second
// macvlan on the parent that container holds); an endpoint whose container
// went away without a Detach keeps its addresses until GC is told it is
// not live. The records cost no extra request to read: they come with the
// anchor.
//
// # Idempotency
//
// New, Attach and AddShim return what exists when it has the settings asked
// for (repaired), and fail with ErrExists when it has others. Detach,
// RemoveShim and Delete succeed for what is gone, also when the
// container's namespace or its interface already went. A failure half way
// undoes what was done: no interface is left, and the addresses are
// released.
//
// # Privileges
//
// CAP_NET_ADMIN in the host and in the container namespaces.
//
// # Concurrency
//
// A Network is safe for concurrent use: attaches and detaches of different
// endpoints run at once (the tests attach 20 at once), those of one
// endpoint one after the other, and a passthru network's all one after the
// other. Across processes, lock files (as in bridge) hold a network's New
// and Delete apart from its attaches and detaches, and GC apart from all.
// Two attaches of one container to two networks at the same moment may
// both choose eth0, and one then fails: give EndpointConfig.IfName. The
// tests run two processes creating one network (50 rounds: both get it,
// with one subnet), a Delete coming while an Attach is half way (it waits,
// then fails with ErrInUse) and the other way round (the Attach waits,
// then fails with ErrNotFound and leaves nothing), and random attaches and
// detaches from four goroutines, with the kernel, Inspect, the IPAM and a
// model agreeing at every quiet point.
//
// # Performance
//
// Measured on the project's 2-core machine (a VM), as root:
//
//	go test -run '^$' -bench . -benchmem -benchtime 200x -count 3 ./macvlan/
//	BenchmarkAttachDetach   1.18-1.33 ms/op  1.13-1.30 ms median  61 KB/op  432 allocs/op
//	BenchmarkAttach         0.70 ms/op                            41 KB/op  321 allocs/op
//	BenchmarkDetach         0.37-0.51 ms/op                       19 KB/op  111 allocs/op
//
// Those were measured before the lifecycle work (marks in the creating
// request, locks, checks). With it, and with the anchor's records of held
// addresses (one more read of the anchor and one request per address, in
// Attach and in Detach), the same command on the same machine, busy with
// other jobs (load average 10 to 12 on 2 cores), gave:
//
//	                        before the records          with them
//	BenchmarkAttachDetach   1.3-3.3 ms median  82 KB  597 allocs   1.6-3.5 ms median  103 KB  750 allocs
//	BenchmarkAttach         3.4-5.4 ms/op      61 KB  451 allocs   1.8-2.7 ms/op       72 KB  524 allocs
//	BenchmarkDetach         0.9-1.6 ms/op      20 KB  144 allocs   1.4-4.8 ms/op       31 KB  225 allocs
//
// (three runs of each, in turns). The times are mostly the load's, but
// Detach pays for its two requests more (reading the anchor, deleting the
// record) in every run, about half a millisecond here; the memory is what
// the records cost: about 20 KB and 150 allocations per attach and detach.
//
// Attach is one request that creates the interface in the container, its
// mark, three sysctls, the address, up and the default route. Detach
// returns once the kernel has taken the interface out of the container:
// unlisted, its addresses and routes flushed, announced to the namespace's
// link listeners (about 0.5 ms). The kernel's answer to the delete request
// comes only after it has freed the device, which waits for RCU grace
// periods (rcu_barrier): 16-19 ms here for any interface, also one never
// up, and also for `ip link set down` (7.5 ms) or a move to another
// namespace (30 ms). Nothing of the interface can be observed in that
// time, so Detach leaves the wait to a goroutine (internal/linkdel); a
// Detach that waited took 17 ms. A passthru network's Detach still waits:
// its anchor can take the parent back only once the device is freed.
package macvlan
