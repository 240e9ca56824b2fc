// Package nsnet is a Go SDK for container networking on Linux: the packages
// that orchestrators, runtimes and test suites import to build their own
// container network stacks. This package holds only documentation; the work
// is done by its packages:
//
//   - netns: network namespaces and the namespace-bound netlink and nftables
//     sockets that every other package acts through;
//   - netns/nstest: test fixtures, sandbox hosts and topologies with leak checks;
//   - veth: veth pairs;
//   - bridge: bridge networks (Docker's default and user-defined networks),
//     containers attached and detached, isolation between networks, and the
//     none, host and container network modes;
//   - nat: outbound masquerade and forwarding;
//   - portmap: published ports (DNAT), with hairpin and localhost access;
//   - macvlan: macvlan networks on a parent interface, and the host's shim;
//   - overlay: VXLAN networks across hosts on a shared store;
//   - ipam: address pools, on a memory or file store;
//   - ipam/etcdstore: the etcd store, for pools shared by several hosts;
//   - dnsd: the embedded DNS server (names, aliases, forwarding) and the
//     containers' resolv.conf and hosts files;
//   - stack: one host's stack for the common case (networks with NAT and
//     DNS, containers with names and published ports, state for restarts),
//     built from the packages above;
//   - examples: one runnable, self-checking program per scenario
//     (examples/check is the harness they run in).
//
// # The namespace model
//
// Every operation takes the namespace it acts in as an explicit *netns.NS;
// none depends on the calling thread's namespace, and none leaves a thread in
// a foreign one. A "host" is therefore any namespace, and every test and
// example runs its host in a sandbox namespace, never touching the machine's
// own.
//
// # Privileges
//
// Creating namespaces needs CAP_SYS_ADMIN, and changing links, addresses,
// routes and nftables needs CAP_NET_ADMIN: in practice, root.
package nsnet
