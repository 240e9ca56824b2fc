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
// as the addresses': etcd (ipam.NewEtcdStore) across machines, a memory or
// file store for hosts simulated as namespaces of one machine. A watch that
// ends (its revision compacted, or the store gone) is followed by a fresh
// List, from which the host recomputes every entry and removes stale ones,
// before watching again from the new revision.
package overlay
