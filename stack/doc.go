// Package stack wires one host's container networking for the common case,
// the way a container runtime uses it: bridge networks with outbound NAT and
// a DNS server on each gateway, containers attached with their names and
// published ports, and the state kept on disk so that a restarted process
// (or a firewall reload) gets the same host back.
//
//	s, err := stack.Open(ctx, host, stack.Config{StateDir: "/var/lib/myruntime/net"})
//	defer s.Close()
//	_, err = s.CreateNetwork(ctx, stack.NetworkConfig{Name: "mynet"})          // docker network create mynet
//	c, err := s.Run(ctx, stack.ContainerConfig{                                 // docker run --network mynet
//		ID: "web", NS: ctr, Networks: []stack.Attachment{{Network: "mynet", Aliases: []string{"www"}}},
//		Ports: []portmap.Mapping{{HostPort: 8080, CtrPort: 80}},                 //   -p 8080:80
//	})
//	err = dnsd.WriteResolvConf(dir, dnsd.ResolvConf{Nameservers: c.Nameservers}) // the container's resolv.conf
//	err = s.Stop(ctx, "web")                                                     // docker stop / rm
//	err = s.DeleteNetwork(ctx, "mynet")                                          // docker network rm
//
// The ordering is Docker's: a network's links before its rules, a
// container's links before its names and ports; and on the way down rules
// and names before links, so that nothing is ever published towards an
// interface that is gone. A step that fails undoes the steps before it.
//
// Everything is built from the lower packages (bridge, nat, portmap, dnsd,
// ipam with its file store), which stay usable alone for what the stack does
// not cover (macvlan, overlay, other IPAM stores, a DNS server per
// container).
//
// # State and recovery
//
// Config.StateDir holds the IPAM file store and stack.json, the networks and
// containers the stack made (written atomically, mode 0600, in a directory
// of mode 0700). Open is the one recovery call of a restarted runtime, after
// a clean exit or a crash at any point of any call (Open's own included):
//
//  1. each network of the state is made whole: made again as it was if its
//     bridge went (a DeleteNetwork cut short, or someone else deleted it),
//     and what drifted repaired;
//  2. everything of nsnet's bridge driver on the host that the state does
//     not hold goes (bridge.GC): what a CreateNetwork or Run cut short left,
//     networks, interfaces, pools, allocations;
//  3. a container one of whose interfaces is gone (its namespace died while
//     no process watched, or a Stop was cut short) is taken down and dropped
//     from the state: it does not run, and Run makes it anew;
//  4. the names are registered, the gateways listened on and the published
//     ports reserved again, and nsnet's nftables table is made to hold
//     exactly the state, in one transaction (portmap.Reconcile): rules and
//     mappings of calls cut short go.
//
// A call that was cut short may or may not have taken effect: re-issue it
// (every call is idempotent). Run of a container that runs checks its
// interfaces and makes again what drifted (an address, a route, the
// interface), with the same addresses. Call Reconcile after a firewall
// reload (`nft flush ruleset`) while the process runs. The host is the
// stack's: its bridge networks are all the stack's (one Stack per host
// namespace and state directory).
//
// TestCrashRecovery kills a process using a Stack at random moments of
// CreateNetwork, Run, Stop, DeleteNetwork and Open, 100 times, and checks
// after each Open that the state is the acknowledged one (or that and the
// call cut short), that the kernel and the table hold exactly it, and that
// the running containers pass traffic.
//
// A Stack is safe for concurrent use; its calls are serialised.
package stack
