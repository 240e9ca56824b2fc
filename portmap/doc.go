// Package portmap publishes container ports on the host, as `docker run -p`
// and `-P` do: a packet for a host address and port is DNATed to a
// container's address and port, by nftables rules in nsnet's own table
// ("inet nsnet") of the host namespace.
//
//	mp, err := portmap.New(host, portmap.Config{})
//	defer mp.Close()
//	m, err := mp.Add(ctx, portmap.Mapping{HostPort: 8080, CtrAddr: ctr, CtrPort: 80, ID: "web"}) // -p 8080:80
//	...
//	err = mp.Remove(ctx, m)
//
// AddAll and RemoveAll do the same for many mappings at once (a
// container's ports, a host's restart), all or nothing: one nftables
// transaction, one reservation pass, one conntrack pass; a *BatchError
// names the mapping that failed a batch. RemoveOwner removes the mappings
// of one ID (a container's); GC those of every ID that is not live, after
// a crash (see Recovery).
//
// Every mapping is one element of a DNAT map (one per port of a range), so
// the rules are the same for 10 mappings and for 10,000, on the control
// path and on the packet path. A published port is reachable from outside
// through the host's addresses (the service sees the client's own
// address), from the host itself (its own addresses and 127.0.0.1), from
// containers of the same network (hairpin: the connection is masqueraded
// so that the reply comes back the same way) and of other networks.
//
// # Security
//
//   - Only packets addressed to a local address of the host (and, for a
//     mapping on one address, to that address) are DNATed; traffic passing
//     through the host to another destination on the same port goes where
//     it was sent.
//   - Packets for 127.0.0.0/8 that did not come in on lo are dropped before
//     NAT (CVE-2020-8558), so a mapping on 127.0.0.1, like any service the
//     host runs on localhost, is reachable from the host only, even from a
//     neighbour or a container that routes 127.0.0.1 at the host.
//     route_localnet, which the host's own access to such a mapping needs,
//     is turned on for the interface towards the container only, and only
//     while a mapping that covers 127.0.0.1 has its container behind it:
//     Remove turns it off with the last. The table records the interfaces
//     it is on for, and stays (with the guard) while any is recorded.
//   - A DNATed connection is forwarded only into nsnet's bridges: a
//     mapping left behind by a deleted network does not send outside
//     traffic on to wherever the host now routes the old container address.
//   - Traffic routed into a bridge that is neither a reply nor DNATed is
//     dropped: a machine on the uplink that routes a container subnet to the
//     host reaches no port that was not published.
//   - Remove of a UDP or SCTP mapping deletes the mapping's elements, then
//     its conntrack entries, so a running UDP stream stops reaching the
//     container at once. Add deletes the entries of a UDP port it
//     publishes, once its elements are in (a datagram that came before
//     them, even one that came while Add ran, made an entry without the
//     DNAT), so that a client that sent to the port before does not
//     keep missing the container. Both match exactly: the protocol, the
//     host's own address (the mapping's, or each local address of its
//     family) and the port; a container's traffic to the same port of
//     another machine keeps its entries. See Conntrack for TCP.
//   - route_localnet is turned on only once the table records the
//     interface (and so has its guard): a process killed in between leaves
//     a record that GC or Remove clears, never route_localnet on without
//     the drop rule.
//   - When an nftables transaction is reported as failed, Add reads the
//     table back and acts on what is there: the kernel may have applied it.
//   - Take the rules away before the links: Remove a container's mappings
//     before it is detached, as Docker does.
//
// # Forwarding
//
// A DNATed packet is forwarded to the container, so Add turns on IPv4 (for
// an IPv6 mapping, IPv6) forwarding in the host namespace where it is off,
// as dockerd does, whether or not the network was given to nat.Masquerade.
// Remove leaves it on: other mappings and networks may need it.
//
// # Conntrack
//
// TCP mappings need no conntrack work, which keeps Remove (a container's
// detach) to one nftables transaction:
//
//   - Add: an entry for the host port without DNAT is either a connection
//     to a program of the host that is still open (its packets must keep
//     going to it: deleting it would break it), or a dead attempt, closed by
//     the host's RST. The port was free (Add reserves it), so no new
//     connection can be established locally; and a new SYN that meets a
//     closed entry makes the kernel drop that entry and track the SYN
//     afresh, through the nat chains and so the DNAT.
//   - Remove: established connections through the mapping run on until
//     they end, as with Docker, which deletes only UDP entries: the
//     container's stop or detach ends them, and their packets are then
//     forwarded to no interface of nsnet's and dropped.
//
// UDP has no connection to end: an entry lives as long as packets keep
// coming, so a stream that started before a change would never see it.
// UDP (and SCTP, on Remove) mappings delete their entries. The kernel
// selects them: each filter (protocol, port, and the host address, or for
// a mapping on every address the DNAT to its container on Remove, each
// local address on Add) is one conntrack flush with CTA_FILTER (Linux
// 6.12), which deletes what matches without copying anything out. More
// than 16 filters at once, or an older kernel (5.10), take one dump per
// family and protocol, filtered by the kernel, and delete each match by
// its exact tuple, zone and ID. Either way the kernel walks its whole
// conntrack table, which no request can avoid: it has no index but the
// full tuple (see Performance).
//
// # Port reservation
//
// While a mapping exists, its Mapper holds a socket on the host address and
// port in the host namespace (TCP: listening; UDP: bound; SCTP: listening,
// where the kernel has SCTP), as dockerd does: no local program can bind
// the port and lose its traffic to the DNAT without knowing, and a port
// that a program holds already cannot be published (ErrPortInUse). The
// reservations end with the Mapper (Close) or the process; the rules stay
// until Remove, so a restarted process calls Reserve for the mappings it
// finds with List. A kernel without SCTP has no SCTP sockets to reserve
// against, so SCTP mappings need none there.
//
// The sockets are made with plain system calls, not net.Listen: one epoll
// instance per Mapper, in Go's poller, tells one goroutine which of them
// has something, and it closes the connections that reach one (they went
// around the DNAT) and drops the datagrams. A socket costs a quarter of a
// net.Listen with a goroutine of its own, which made a host's first batch
// of 1,000 mappings 30 ms (see Performance).
//
// # Recovery
//
// A process killed in Add, AddAll, Remove or RemoveAll leaves nothing that
// a later process cannot find: the mappings are elements of nsnet's table,
// named by their ID, and route_localnet is on only for interfaces the
// table records. The recovery of a restarted orchestrator, once per host,
// with the owners (container IDs) it still has:
//
//	mp, err := portmap.New(host, portmap.Config{})
//	// 1. The removals that were in flight, again: they are idempotent, and
//	//    delete the UDP conntrack entries even of elements already gone.
//	err = mp.RemoveAll(ctx, inFlight)
//	// 2. Every mapping whose owner is not live goes (with its conntrack
//	//    entries); route_localnet is made what the rest need; an empty
//	//    table goes.
//	_, err = mp.GC(ctx, live)
//	// 3. The reservations of what is left.
//	ms, err := mp.List(ctx)
//	for _, m := range ms {
//		err = mp.Reserve(m)
//	}
//
// An Add that was not acknowledged (the process died in it) is not live:
// its owner is left out of live, and the call re-issued after the
// recovery if still wanted. A mapping without an ID survives GC (no owner
// can be judged): give every mapping one. After a firewall reload, it is
// Reconcile that puts the table back (see below). The tests kill a child
// process at every step of Add, AddAll, Remove and RemoveAll (reservation,
// forwarding sysctl, table creation, nftables transaction, route_localnet,
// conntrack cleanup, release) and at random instants, over 100 kills, and
// check after this recipe that the table, route_localnet, its record and
// the conntrack entries of the ports equal a model of the acknowledged
// calls, and that traffic goes through a published port.
//
// # Firewall reloads and other rulesets
//
// A firewall reload or `nft flush ruleset` deletes nsnet's table with the
// rest: Reconcile puts back every network's isolation and masquerade and
// every mapping from the state the caller holds, in one transaction.
// nsnet's forward chain first jumps to its "user" chain, which nsnet
// creates empty and never flushes: the place for a user's own policy, like
// Docker's DOCKER-USER chain.
//
// nsnet reads and changes no table but its own. It works next to Docker's
// iptables-nft tables (the tests run it with them present and check that
// they do not change). A packet must be accepted by every table's base
// chains: where another table drops forwarded traffic by policy (dockerd's
// FORWARD policy is drop, unless "ip-forward-no-drop"), nsnet's bridges
// need an accept rule there, which is that table owner's to add.
//
// # Performance
//
// Measured on the project's 2-core machine, as root, while other test
// suites ran on it (load average 10 to 13: the figures are upper bounds),
// three runs each (-count 3), the range of their medians:
//
//	go test -run '^$' -bench 'Publish|UDP|All1000' -benchmem -benchtime 200x -count 3 ./portmap/
//
//	host's mappings before          10            1,000         10,000
//	publish (tcp, median)           0.11-0.18 ms  0.12-0.20 ms  0.14-0.20 ms
//	unpublish (tcp, median)         0.14-0.20 ms  0.16-0.20 ms  0.16-0.23 ms
//	allocations per publish+unpublish: 127 KB, 952
//
//	host's conntrack entries        10            10,000
//	publish (udp, median)           0.56-0.59 ms  2.3-3.8 ms
//	unpublish (udp, median)         0.64-0.68 ms  2.3-3.9 ms
//	allocations per publish+unpublish: 115 KB, 1,067
//
//	1,000 mappings to 10 containers, on a host with 10:  all TCP     half UDP
//	  AddAll, a host's first (-bench AddAll1000First)    15-18 ms    23-26 ms
//	  AddAll, again (-bench AddAll1000)                  11-15 ms    25-28 ms
//	  RemoveAll (-bench RemoveAll1000)                   9.5-10 ms   16-20 ms
//	  allocations per AddAll+RemoveAll (TCP): 2.9 MB, 18,038
//
//	masquerade + remove of a network (-bench Masquerade):
//	  the host's first: 0.34-0.42 ms; its 100th: 1.1 ms
//
//	a container's detach with one published TCP port: RemoveOwner, then
//	the bridge's Detach (-bench DetachPublished -benchtime 300x), median,
//	idle machine: 1.39-1.47 ms, of which RemoveOwner 0.42-0.44 ms
//
// That RemoveOwner takes the container's only mapping on its bridge, so it
// also turns route_localnet off for the bridge (0.3 ms: the table's
// record, the route to the container, the sysctl); with other mappings to
// the same bridge left, an unpublish is the nftables transaction alone
// (0.18-0.26 ms, above).
//
// On a quieter machine (load 1 to 2) a host's first AddAll of 1,000 took
// 10.5 ms (all TCP) and 16 ms (half UDP), where it took 30 and 39 ms
// before the reservations were plain sockets: 1,000 net.Listen calls, each
// with a goroutine blocked in Accept, cost 15 to 45 ms to open (the first
// time in a process the most) and 14 to 25 ms to close; the plain sockets
// with the drainer cost 5 to 7 ms and 4 ms. The rest of the batch is one
// nftables transaction of 1,000 elements (4 to 6 ms), the route lookups
// for route_localnet, and for UDP the conntrack dump (about 6 ms).
//
// Publishing and unpublishing a TCP port cost the same at 10,000 mappings
// as at 10: conflicts are checked against the Mapper's index, the kernel
// adds or deletes one map element, and there is no conntrack work (see
// Conntrack).
//
// A UDP port's conntrack cleanup is one filtered flush: one kernel walk
// of the conntrack hash table, which is the whole machine's (262,144
// buckets here), nothing copied out. Measured one flush at a time, in a
// namespace with no entries at all 0.02-0.1 ms (the kernel skips the walk
// for a namespace without entries), with 10 entries 0.4-0.8 ms (the
// buckets), with 10,000 entries 2.0-4.2 ms, about 0.2 µs an entry. That
// walk is the floor of a cleanup by filter, and 1 ms at 10,000 entries is
// out of its reach. Finding the entries without it needs their full
// tuples, and the client's address and port are in no request: the
// kernel's only index is the hash of the full tuple (and zone). What else
// was weighed, and why it is not done:
//
//   - Deleting by exact tuple needs the tuples: a dump walks as the flush
//     does (and costs more, about 6 ms even without entries: it locks every
//     bucket); a record of the clients kept by the packet path (a dynamic
//     set refreshed on every packet) has timeouts of its own that nothing
//     ties to the entries' (sysctls, per-entry timeouts set through
//     ctnetlink), and an entry it misses is the stale entry this cleanup
//     exists to delete. A ct mark or zone per mapping only changes what the
//     walk compares.
//   - A conntrack zone per container target (set in the raw hooks for the
//     mapping's host port, in the original direction only, with the DNAT
//     chosen by zone) would make publish need no cleanup at all: the entries
//     from before are in another zone and never looked up again. But
//     Remove would leave the mapping's entries in place: the container
//     would keep sending to its clients as the host's port, and a client
//     that reaches the same container through another host port from the
//     same source port would be dropped (its reply tuple clashes with the
//     old entry's, which zones in one direction do not separate) for up to
//     the UDP stream timeout (120 s). It would also cost two raw chains
//     that every UDP packet to the host passes, a zone allocator shared by
//     processes, and a conntrack walk on Reconcile. Unpublish stays at the
//     flush; publish could reach about 0.2 ms that way, at that price.
//
// Removing a network's masquerade reads which subnets are its, one
// element per masqueraded subnet of the host.
package portmap
