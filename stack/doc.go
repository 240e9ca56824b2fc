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
// of mode 0700). Open reads it back: it opens the networks, registers the
// names again, listens on the gateways again, reserves the published ports
// again, and puts nsnet's nftables table back as the state says
// (portmap.Reconcile). Call Reconcile after a firewall reload (`nft flush
// ruleset`) while the process runs.
//
// A Stack is safe for concurrent use; its calls are serialised.
package stack
