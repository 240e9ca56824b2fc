// Package overlay builds VXLAN networks that span hosts, as Docker's
// overlay driver did with a shared key-value store: a network defined on
// one host exists on all of them, its containers get addresses that no
// other host hands out, and they reach each other across hosts.
//
//	h, err := overlay.Join(ctx, overlay.HostConfig{NS: host, Name: "host1",
//		VTEP: underlayAddr, Store: store, Alloc: alloc})
//	defer h.Close(ctx)
//	n, err := h.Create(ctx, overlay.Config{Name: "ov", VNI: 4096, Subnets: subnets})
//	ep, err := n.Attach(ctx, overlay.EndpointConfig{ID: "c1", NS: ctr})
//
// # On each host
//
// A network is a bridge ("ovbr" and the VNI in hex) with a VXLAN device
// ("ovvx" and the VNI) as a port: the VNI, UDP 4789 by default, the host's
// underlay address as source, address learning off and proxy ARP on.
// Containers are veth pairs on the bridge; their MTU is the underlay
// link's minus VXLAN's 50 bytes, read from the link that has the host's
// address.
//
// # The control plane
//
// Each host publishes its endpoints (MAC, addresses, its VTEP) in the
// store and watches everything the others publish, programming the VXLAN
// device: an FDB entry per remote MAC (to its host's VTEP), a neighbour
// entry per remote address (answered by proxy ARP, so no ARP crosses the
// underlay), and a flood entry per remote host. It removes them when
// endpoints, hosts or networks go. The store is an ipam.Store, the same
// as the addresses': etcd (package ipam/etcdstore) across machines, a memory or
// file store for hosts simulated as namespaces of one machine. A watch that
// ends (its revision compacted, or the store gone) is followed by a fresh
// List, from which the host recomputes every entry and removes stale ones,
// before watching again from the new revision. A host's own heartbeat comes
// back through its watch every third of the lease, so a watch silent for a
// whole lease is given up and replaced the same way.
//
// A host is alive while its record changes: every host rewrites its own
// every third of HostConfig.LeaseTTL, and the others judge by their own
// clocks (so the hosts' clocks need not agree). A host whose record has
// not changed for a lease is dead: its entries leave every kernel and its
// records the store. Its addresses stay allocated, so that they are not
// handed out twice should it come back; a host that finds its own records
// deleted publishes them again. A restarted host adopts what its earlier
// process programmed and removes what is stale.
//
// An endpoint is published before its interface is made, so that the
// others program it meanwhile; when a host programs a remote address, it
// announces it (gratuitous ARP) into its bridge, for a container that
// asked before the entry was there and would otherwise ask again only a
// second later.
//
// # Who may send
//
// A VXLAN device takes every packet to its UDP port that carries its VNI,
// whoever sent it. So each host filters, in nsnet's nftables table (an
// input-hook chain, before the device's socket takes the packet): an IPv4
// UDP packet to an overlay's port and VNI (the 3 bytes at offset 4 of the
// VXLAN header) is accepted only from the VTEP of a host in the store that
// has endpoints on that network, the hosts its flood entries name, and is
// otherwise dropped and counted (Host.Stats). The filter of a network is
// in place before its device is made, follows the store with the other
// entries (a host whose record goes loses access when the others see it),
// and goes after the device. Processes and containers of the host are no
// peers either, and a forward-hook chain drops what a masqueraded
// container sends to an overlay's port and VNI, which would otherwise
// leave with the host's address, a peer's. The underlay is IPv4 only.
// After someone flushes the table, the next heartbeat of the host (a
// third of the lease) programs the filter again.
//
// # Crashes, drift and recovery
//
// Every link the package makes is the overlay driver's from the moment it
// exists: the request that creates a network's bridge ("ovbr" and the VNI)
// and VXLAN device ("ovvx" and the VNI), or an endpoint's veth pair, gives
// it the driver's device group (IFLA_GROUP, `ip link show group N`: tag
// 0x6f in the high byte, a hash of the VNI or of the network and endpoint
// below), which is not bridge's or macvlan's, so that their GC leaves the
// overlay's links alone and this package's GC leaves theirs. An endpoint's
// host veth then gets its mark, an interface alias naming the network, the
// endpoint, its interface and MAC.
//
// The store is shared by the hosts, so what a host writes says whose it
// is: an endpoint's record is under its host's name, and Attach writes it
// first, as a claim (pending: the other hosts program nothing for it),
// before it allocates; it publishes the record when it has the addresses,
// then makes the interface. Detach turns the record back into a claim (the
// others drop the endpoint), removes the veth and the egress, releases the
// addresses, and deletes the claim last. So a process killed at any point
// of Attach or Detach leaves a record of its host by which that host's GC,
// or a Detach or Attach again, finds what to finish or undo. A Create
// makes the pool, then the definition; a Delete removes the definition,
// then the pool: a Create or Delete killed half way is completed by the
// same call again (Delete of a network without a definition removes its
// pool).
//
// Create and Host.Network check what exists on this host and repair it:
// the bridge and VXLAN device made again if gone, the VXLAN device a port
// of the bridge, both up, the FDB and neighbour entries that the control
// plane programmed put in again if they left the kernel, and the ingress
// filter read back and completed. Attach of an endpoint that exists
// repairs it: its record (published again), its allocation (taken again
// with the addresses it had), its host veth (its mark, a port of the
// bridge, up), the container's interface (up, its addresses, the routes to
// their subnets) and its egress. [Network.Check] and
// [Network.CheckEndpoint] report the same without changing anything, as
// CNI CHECK does: a *DriftError naming each missing record, pool,
// allocation, bridge, vxlan, port, up, fdb, neighbour, filter, interface,
// mark, address or route.
//
// The recovery of a restarted orchestrator, once per host, with the
// endpoints it still has there:
//
//	// 1. Take part again: the devices of every defined network are made
//	//    or adopted, stale entries removed.
//	h, err := overlay.Join(ctx, hostConfig)
//	// 2. Remove what no live endpoint of this host claims, and what
//	//    killed calls left.
//	_, err = h.GC(ctx, overlay.Live{Endpoints: eps})
//	// 3. Issue again the network calls that got no answer (Create or
//	//    Delete), then make each live network and endpoint whole
//	//    (idempotent, repairs drift).
//	for _, cfg := range networks {
//		n, err := h.Create(ctx, cfg)
//		for _, ec := range endpointsOf(cfg.Name) {
//			_, err = n.Attach(ctx, ec)
//		}
//	}
//
// An Attach or Detach that got no answer is not live: GC removes what it
// left; issue it again after the recovery if it is still wanted. GC never
// removes another host's records, nor an allocation that another host's
// record claims (or that no record claims at all: a host the others took
// for dead keeps its addresses); networks are the cluster's, and go only
// with Host.Delete. If the host's egress uses bridge's GC as well, its
// Live must name the gateway network "overlay_gwbridge" (or be nil) and
// its endpoints (ID "NETWORK.ID"), or overlay's GC detaches them alone.
//
// The tests kill the process of one of two hosts (SIGKILL, on a real etcd
// server across the underlay) at every step of Create (pool, define,
// bridge, filter, vxlan), Attach (claim, allocate, publish, veth, mark,
// port, address), Detach (unpublish, veth, release) and Delete (checked,
// define), three rounds, and then at random moments, 100 calls cut half
// way in all; after this recipe the store, the host's links, FDB and
// neighbour entries and ingress filter equal the acknowledged calls, and
// endpoints attached again on both hosts reach each other. They also
// remove, behind nsnet's back, a container's address and route, a port, an
// endpoint's record and allocation, an FDB and a neighbour entry, a filter
// peer, the VXLAN device and the bridge: Check names each, and the
// idempotent call repairs it, with traffic across the hosts.
//
// A Delete on one host and an Attach on another never both succeed: the
// Attach's claim is written in one transaction with the network's
// definition (written again as it was read), and the Delete removes the
// definition and its VNI in one transaction at the revisions its check
// of the endpoints saw. So the Delete either commits first (the Attach
// fails with ErrNotFound and leaves nothing) or sees the claim (and fails
// with ErrInUse); TestDeleteRacingAttach holds each call at its step to
// make both orders happen.
//
// # Names
//
// With HostConfig.DNS set, a host keeps its embedded DNS server (dnsd) in
// step with the store: every overlay of the host is a network there, and
// every endpoint on every host a name (its ID) with its addresses, removed
// when the endpoint or its host goes. Containers resolve their peers on
// other hosts through that server (ListenContainer, 127.0.0.11).
//
// # Egress
//
// Containers of an overlay that is not Internal also get an interface on
// their host's gateway bridge ("ovgwbridge", Docker's docker_gwbridge), a
// bridge network masqueraded behind the host's address, with their default
// route.
//
// # Performance
//
// Convergence: from Attach returning on host A to the first answer to a
// container of host B that keeps sending to the new endpoint, 100
// endpoints, measured on the project's 2-core machine, as root:
//
//	go test -run '^$' -bench Convergence -benchtime 1x -count 2 ./overlay/
//
//	store          median    p99
//	memory         0.23-0.27 ms  1.6-1.8 ms
//	etcd           0.28-0.30 ms  0.7-1.5 ms
//
// Before the announcement, one endpoint in ten took a second: the
// container's ARP retry.
//
// With the VXLAN ingress filter (a host also writes a network's peers
// into nftables, when they change), measured with the same command on the
// same machine while other test suites loaded it (load average 12 to 13),
// side by side with the commit before the filter, three runs each:
//
//	store   with the filter            before it
//	        median      p99            median      p99
//	memory  1.30-1.41   9.9-79 ms      0.24-1.29   3.6-92 ms
//	etcd    0.60-1.43   4.5-33 ms      0.27-1.38   5.7-45 ms
//
// The load drowns any difference.
//
// Attach and Detach of one endpoint of an internal overlay on one host,
// with the crash safety of issue 15 (Attach writes a claim before it
// allocates, Detach turns the record into a claim before it removes: one
// more store write each; the endpoint's lock files; the mark; the checks
// that repair what exists), side by side with the commit before it, two
// runs each, interleaved, while other test suites loaded the machine (load
// average 14 to 17 on 2 cores):
//
//	go test -run '^$' -bench 'Attach$' -benchtime 200x ./overlay/
//
//	                 with the claim                 before it
//	memory  attach   2.5-4.8 ms  71 KB  536 allocs  3.1-3.9 ms  40 KB  305 allocs
//	        detach   2.0-4.7 ms  17 KB  190 allocs  2.2-2.5 ms  14 KB  112 allocs
//	etcd    attach   13.9-16.8 ms 124 KB 1315 allocs 8.1-11.6 ms 76 KB  831 allocs
//	        detach   14.9-15.8 ms 64 KB  878 allocs  9.9-12.8 ms 41 KB  525 allocs
//
// On etcd each store write is a consensus round with an fsync (3-5 ms
// here): the claim costs one of them per call.
package overlay
