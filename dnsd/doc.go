// Package dnsd is nsnet's embedded DNS server: what Docker's 127.0.0.11
// resolver and Podman's aardvark-dns give containers. Peers' names resolve
// on the networks they share, other names are forwarded to the host's
// resolvers, and nothing leaks between networks.
//
// One Server serves many networks. AddNetwork names a network and its
// subnets; Register and Unregister add and remove endpoints (a name,
// aliases, IPv4 and IPv6 addresses) with immediate effect.
//
// # Answers
//
// A and AAAA for names and aliases, as single labels ("web.") and under
// the networks' domain ("web.nsnet.internal."), case-insensitive; PTR for
// registered addresses; several endpoints under one alias answer with all
// their addresses, rotated (round robin); the TTL is Config.TTL.
//
// Names are scoped by the client. A client is an interface and an
// address, never a source address alone (a source address is a claim):
// a query to a ListenHost listener gets answers only from the networks
// attached (AddNetwork's ifaces) on the interface it arrived on
// (IP_PKTINFO, IPV6_PKTINFO; for TCP, the interface of the SYN) one of
// whose subnets holds its source address; a query to a ListenContainer
// listener must arrive over the container's loopback, and is the
// container's (its addresses decide its networks). So a container that
// forges another network's address, a container of an internal network
// that forges a normal network's address (to have its queries forwarded),
// and a LAN neighbour that forges a container's address all get REFUSED,
// which carries no names and is no larger than the query. The host itself
// (a query from one of the namespace's own addresses) is a client only
// with Config.AnswerHost. A name registered on two networks answers with
// its address on the asker's network. A name of another network is
// NXDOMAIN. A client on no network gets REFUSED, without RA: the server is
// never an open resolver. (The kernel stops most forgeries first: nsnet's
// bridges turn on strict reverse-path filtering, the rp_filter sysctl for
// IPv4 and a rule of nsnet's nftables table for IPv6, which drops forged
// addresses of other networks; and a bridge port lets IP and ARP through
// only from its endpoint's own addresses, and IPv6 link-local ones, so a
// container cannot forge a neighbour on its own network either, which
// the server could not tell: TestSpoofNeighbour.)
//
// # Forwarding
//
// Other names go to Config.Upstreams (by default the nameservers of the
// host's /etc/resolv.conf less loopback ones, as Docker and Podman do),
// in order: over UDP, over TCP when the answer is truncated, each attempt
// bounded by Config.Timeout; on a timeout, an error, SERVFAIL or REFUSED
// the next upstream is tried, and the client gets SERVFAIL when all fail.
// Each attempt uses a fresh random ID and a new socket (a fresh source
// port) connected to the upstream, and an answer counts only when its ID
// and question match. Forwarded queries always leave from the host
// namespace (Config.NS), whichever namespace they arrived in. Names under
// the domain, single-label names and reverse names of the networks'
// addresses are never forwarded (NXDOMAIN), and nothing is forwarded for a
// client on internal networks only (REFUSED): DNS would be an exfiltration
// path out of a network with no egress (CVE-2024-29018). At most
// Config.MaxForwards queries are forwarded at once, and at most
// Config.MaxClientForwards of one client, so that one client's slow names
// cannot starve the others; past that SERVFAIL. An upstream that is the
// server itself (the unspecified address, or a listener in the server's
// host namespace on the upstream's address) is a *ValidationError.
//
// Conntrack: each attempt is a new UDP flow of the host namespace (its
// own source port), so where the host tracks connections (any NAT,
// nsnet's included) it makes a conntrack entry, which stays for
// nf_conntrack_udp_timeout (30 s) after the answer: at 40,000 queries a
// second about 1.2 million, past the default table size (nf_conntrack_max,
// 262,144). These entries are never assured (one query, one answer), so
// a full table drops them first to make room for new flows (early drop)
// and refuses nothing, but they crowd out others' unassured entries. dnsd
// adds no notrack rule, by choice: an untracked answer has the ct state
// "untracked", which a host firewall that lets in "established" packets
// only (the usual input chain) drops, in a table that is not nsnet's and
// whose drop no rule of nsnet's can undo, so forwarding would stop on
// such hosts. That is the host's call: a host whose firewall accepts them
// may skip tracking for its resolvers' traffic in a raw chain of its own
// (nft: "udp dport 53 ip daddr <upstreams> notrack" at hook output and
// "udp sport 53 ip saddr <upstreams> notrack" at hook prerouting, priority
// raw), or shorten nf_conntrack_udp_timeout. In BenchmarkQuery such a
// rule saves about 1 µs of CPU per forwarded query (3%).
//
// # Listeners
//
// ListenHost listens on a network's gateway address in the host namespace,
// UDP and TCP, as aardvark-dns does. ListenContainer listens on
// 127.0.0.11:53 inside a container's namespace, as Docker does. Where port
// 53 is taken (a dnsmasq on the host), a listener on another port gets a
// DNAT from port 53 of its address in nsnet's nftables table (elements
// whose comment is "nsnet-dns"), removed by Listener.Close.
//
// TCP connections are capped (Config.MaxTCPConns, a connection over it is
// closed at once) and each query must arrive whole, and each answer be
// taken, within Config.TCPIdle, so an idle, slow or half-closed client
// cannot stall or spin the server. UDP answers larger than the client's
// buffer (512 bytes, or its EDNS size) are truncated with TC set.
// Malformed queries get FORMERR or no answer; FuzzHandle fuzzes the
// handler.
//
// # Recovery
//
// A Server often lives in a daemon that outlives the orchestrator
// registering names in it, so the names of containers that went while the
// orchestrator was down stay. After a restart the orchestrator gives
// Server.GC what it still has (Live: its networks, and each live
// container's endpoints by network and name, as bridge.GC takes them), and
// GC removes every other network and endpoint in one step: their names
// answer NXDOMAIN, their PTR records go, an alias shared with live
// endpoints keeps only the live addresses, and a network that is gone
// has no clients (REFUSED). Calling it again removes nothing more. With
// the host's recipe of the bridge package (bridge.GC, then New and Attach
// of what is live):
//
//	// After bridge.GC and the networks' repair:
//	_, err := srv.GC(dnsd.Live{Networks: names, Endpoints: eps})
//	// Each live network and endpoint again (both idempotent; Register
//	// replaces an endpoint of the same name with what it is now).
//	err = srv.AddNetwork(name, subnets, internal, bridgeName)
//	err = srv.Register(name, dnsd.Endpoint{Name: ctr, Aliases: aliases, Addrs: addrs})
//
// # Files
//
// WriteResolvConf and WriteHosts write a container's resolv.conf and hosts
// files into a directory the caller gives, atomically (temporary file,
// fsync, rename, fsync of the directory).
//
// # Observability
//
// Server.Stats returns counters: queries by type and answer code,
// forwarded queries, upstream failures, TCP retries, mismatched upstream
// answers, truncations, rejected TCP connections, and a latency histogram.
//
// # Performance
//
// How a query is served. A UDP listener's readers take a datagram, its
// interface (one control message) and its source; a plain query (one
// question, at most an OPT record without options, a name of plain
// labels: what resolvers send) is read without unpacking it, and an A or
// AAAA answer of a local name is written as bytes (the bytes miekg/dns
// would pack: FuzzQuick holds the two paths to each other), on the
// reader's goroutine. The lookup takes a read lock, matches the client
// against the networks' subnets and does one map lookup per network of
// the client, so its cost does not grow with the number of names. Other
// queries are unpacked and packed with miekg/dns. A query to forward is
// written to the upstream by the reader, over a UDP socket of its own (a
// fresh random source port and ID, RELIABILITY rule 10) made, connected
// and added to an epoll set ahead of need in the host namespace by one
// goroutine that stays there (no thread switch per query; it wakes once
// per 32 queries, and then also closes the sockets that are done with),
// and the reader goes on reading. One loop per server waits for every
// upstream's answers at once (its epoll descriptor is in the runtime's
// poller), matches each by ID and question and relays it as the upstream
// sent it (unpacked only to truncate); its read deadline is the oldest
// query's timeout. No goroutine per query, no timer per query.
//
// BenchmarkQuery: UDP queries from 8 concurrent sockets in a container
// namespace to the gateway listener; for forwarded names, the upstream is
// in an outside namespace, in the test process, and is a lean responder
// (newFastUpstream: one read and one write per query, no unpacking), so
// that the figure is dnsd's: on this machine the clients, dnsd and the
// upstream share 2 cores, and the miekg/dns server that the benchmark used
// before cost 5-9 µs of CPU more per query (upstream-alone, below: the
// clients ask the upstream themselves, through the host, 13.5-22.2
// cpu-µs/q with it, 8.4-13.1 with the lean one, which answers 57,000-
// 119,000 queries a second so, well above dnsd's figures). cpu-µs/q is the
// test process's CPU time (user and system, the kernel's work for it
// included) per query: two idle cores give at most 2,000,000/cpu-µs/q
// queries a second. Before (a62dd29) and after, in turn, 3 times, in one
// run:
//
//	go test -c -o new.test ./dnsd/ && ./new.test -test.run '^$' \
//	    -test.bench 'Query/' -test.benchtime 2s -test.benchmem
//
// on the project's 2-core machine while other helpers' test suites ran on
// it (load average 5-12), which lowers qps and raises p99 far more than
// cpu-µs/q:
//
//	                        before                      after
//	local, 10 names:        58,000-82,000 qps           60,000-104,000 qps
//	                        11.1-15.4 cpu-µs/q          7.5-11.1 cpu-µs/q
//	                        p99 0.55-1.2 ms             p99 0.20-0.97 ms
//	                        16 allocs/op, 1.1 KB/op     4 allocs/op, 270 B/op
//	local, 10,000 names:    58,000-87,000 qps           84,000-101,000 qps
//	                        11.1-15.5 cpu-µs/q          9.5-11.8 cpu-µs/q
//	forwarded, 100 names:   12,800-21,700 qps           25,400-28,900 qps
//	  (lean upstream in     p99 1.9-8.2 ms              p99 1.4-2.0 ms
//	   both)                42.7-61.7 cpu-µs/q          45.7-48.0 cpu-µs/q
//	                        22 allocs/op, 1.2 KB/op     12 allocs/op, 0.9 KB/op
//	forwarded, 10,000       13,000-22,800 qps           25,000-30,300 qps
//	  names:                43.8-68.6 cpu-µs/q          29.2-53.4 cpu-µs/q
//
// (With the benchmark's old upstream, before: 11,700-17,400 forwarded
// qps, 44-83 cpu-µs/q.) Later, with the machine quieter (load 2-4), in
// turn, 2-3 times each (before*: a62dd29 with the benchmark's old
// miekg/dns upstream):
//
//	                        before*          before           after
//	local, 10 names:        91,000-108,000                    108,000-126,000 qps
//	local, 10,000 names:                     91,000-110,000   110,000-127,000 qps
//	                                         p99 0.37-0.48 ms p99 0.24-0.32 ms
//	forwarded, 100 names:   19,300-20,700    28,600-30,800    28,500-37,500 qps
//	                        p99 2.2-2.4 ms   p99 1.6-1.7 ms   p99 1.0-1.3 ms
//
// The earlier releases' local figure, 139,000-
// 146,000 qps, was measured on a quieter machine; in the quieter moments
// of other runs of this code (load 7-10) the local rows reached 110,000
// qps (7.7-8.1 cpu-µs/q) and the forwarded ones 37,700 qps with a p99 of
// 1.3 ms (24-25 cpu-µs/q); at load 14-20, 28,000-31,000 qps with a
// p99 of 1.2-1.5 ms where the old code gave 22,000 and 2.1-2.9 ms. So
// the goal of issue 19 (40,000 forwarded qps with a p99 under 2 ms) was
// not shown on this machine while it was loaded, and is within what its
// cores give when idle. What is left of a forwarded query is mostly the
// kernel's (perf): four UDP sends, each carrying its datagram through
// veths, a bridge and netfilter to the receiving socket (40% of the
// process's CPU), and the socket that rule 10 requires per attempt:
// socket and connect 11%, close 7%, epoll 2%; Go's scheduling is about 10%
// and dnsd's own code under 5%.
//
// With 8 clients the figure is bound by latency, not CPU: the process
// used 65-78% of the two cores, and a query waited for four goroutines in
// turn (client, reader, upstream, loop). The closes were on the loop, in
// the way of the answers behind them; since the filler closes the sockets
// (and holds 64 ahead, not 128), in turn with the code before, 2 s each,
// on 2026-12-07: while the machine was slow (the same binary gave 25,000
// to 38,000 qps within an hour), 29,400-32,600 qps, p99 1.27-1.36 ms,
// where the code before gave 24,900-31,400 and 1.15-1.45 ms; idle and
// fast, 40,000-42,800 qps in 11 runs of 14 (the others 29,300-39,900; p99
// 0.81-1.06 ms), where the code before reached 40,000 in 3 runs of 8
// (24,500-40,900; p99 0.85-1.08 ms). The goal (40,000 with a p99
// under 2 ms) is reached on an idle machine, at its edge. Through
// peerbench's dns_qps.sh (dnsperf in a container, 60 queries in flight,
// dnsmasq as the upstream, separate processes), 28,000-38,000 forwarded
// qps before and after alike, by the machine's hour.
//
// # Concurrency
//
// A Server and its Listeners are safe for concurrent use.
package dnsd
