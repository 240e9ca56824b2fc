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
// Measured on the project's 2-core machine, quieter than below and before
// the forwarding work below, with
//
//	sudo go test -run '^$' -bench Query -benchtime 2s -count 3 ./dnsd/
//
// (UDP queries from 8 concurrent sockets in a container namespace to the
// gateway listener, client and server sharing the 2 cores; range of 3 runs):
//
//	local name, 10 names:        82,000-133,000 qps, p50 45-47 µs, p99 221-261 µs
//	local name, 10,000 names:   139,000-146,000 qps, p50 44-45 µs, p99 195-227 µs
//	forwarded, 10,000 names:     23,500-24,600 qps, p50 281-293 µs, p99 1.3-1.5 ms
//	                             (upstream in an outside namespace)
//
// Forwarding (issue 19), before and after: the query is packed once (a
// fresh random ID written into it per attempt), answers are matched by
// their header and question bytes and relayed as they came (unpacked only
// to truncate, or to cut an OPT record that is not last), and each query
// takes a socket made and connected ahead in the host namespace and
// handed over as a bare descriptor in the runtime's poller (no
// net.FileConn, no net.Conn). Old and new binaries run in turn, 3 times:
//
//	go test -c -o new.test ./dnsd/ && ./new.test -test.run '^$' \
//	    -test.bench 'Query/(forwarded|local|upstream-alone)' -test.benchtime 2s -test.benchmem
//
// on the 2-core machine while other helpers' test suites ran on it (load
// average 6-8; earlier runs at 14-19 gave the same ratios). The clients
// (8 sockets), the server and the upstream (a miekg/dns server in an
// outside namespace, in the test process) share the 2 cores. cpu-µs/q is
// the process's CPU time (user and system) per query, kernel work for it
// included: it rises with the machine's load, less than qps falls.
//
//	                        before                    after
//	forwarded, 100 names:   8,400-14,200 qps          20,500-22,200 qps
//	                        p50 290-332 µs            p50 203-270 µs
//	                        p99 4.9-6.7 ms            p99 2.2-3.2 ms
//	                        68-85 cpu-µs/q            49-67 cpu-µs/q
//	                        78 allocs/op, 4.4 KB/op   49 allocs/op, 2.5 KB/op
//	local name, 10 names:   46,000-101,000 qps        49,000-81,000 qps
//	                        9.2-13.7 cpu-µs/q         10.1-13.3 cpu-µs/q (unchanged)
//	upstream alone:                                   51,000-62,000 qps, 13-15 cpu-µs/q
//
// ("upstream alone": the clients ask the upstream themselves, through the
// host, without dnsd.) At the machine's quietest (load 7, the first
// figures above taken at load 10-18 were 43-50 cpu-µs/q), a forwarded
// query costs 43-50 µs of CPU for everything, of which the upstream and
// the path take 13-15 and the client's side of a local query 10: two idle
// cores bound this benchmark at about 40,000-46,000 forwarded queries per
// second. So the goal of issue 19 (40,000 qps, p99 under 2 ms) is at the
// edge of this 2-core machine with everything on it, and was not shown on
// it: it was never idle while this was measured. What is left of dnsd's
// own part is mostly the kernel's: the write to the upstream (a new
// conntrack entry per query, the veths), and making, connecting (a random
// free port) and closing one socket per query, which rule 10 requires
// (pprof: socket and connect about 8%, close 3%, the write 10% of the
// process's CPU); Go's own share (scheduling, a goroutine per forwarded
// query, timers) is under 10%.
//
// The read path takes a read lock, matches the client against the
// networks' subnets and does one map lookup per network of the client, so
// its cost does not grow with the number of names (compare the two local
// rows). Telling the client's interface costs one control message per
// datagram and lock-free lookups of cached interface names and local
// addresses. A forwarded query takes a UDP socket made and connected to
// its upstream (a fresh source port) ahead of need in the host namespace
// by one goroutine that stays there (no thread switch per query, and that
// goroutine wakes once per half of its stock), and closes it after its one
// query.
//
// # Concurrency
//
// A Server and its Listeners are safe for concurrent use.
package dnsd
