// Command nsnet-cni is a CNI plugin (spec 1.1; cniVersion 0.4.0 to 1.1.0)
// that gives containerd, CRI-O (and so Kubernetes), nerdctl, Podman's CNI
// backend and any other libcni user nsnet's networks: bridge networks with
// masquerade, published ports and names; macvlan networks; VXLAN overlays
// across nodes on etcd.
//
// # Install
//
//	go build -o /opt/cni/bin/nsnet-cni  ./cmd/nsnet-cni
//	go build -o /opt/cni/bin/nsnet-cnid ./cmd/nsnet-cni/nsnet-cnid
//	cp cmd/nsnet-cni/examples/bridge.conflist /etc/cni/net.d/10-nsnet.conflist
//
// Both binaries go in the CNI bin directory: nsnet-cni is the plugin the
// runtime execs, nsnet-cnid its node daemon.
//
// # The node daemon
//
// A CNI plugin is a short-lived exec, but a node needs things that
// outlive one: the DNS server that answers the containers' names, the
// sockets that reserve published host ports, an overlay's control plane
// that programs the other nodes' endpoints into the kernel as they come
// and go. So the plugin is a thin client (a few MB, no etcd or gRPC
// linked, fast to exec): it checks the configuration, then hands the call
// to nsnet-cnid over a unix socket in the state directory
// (stateDir/nsnet-cni.sock) and prints its answer. The first call starts
// the daemon (next to the plugin, else on PATH), detached, in the
// plugin's network namespace: the node's. One daemon serves one state
// directory; a second one started at the same moment finds the lock
// taken (stateDir/daemon.lock) and exits. Its PID is in
// stateDir/daemon.pid, its log in stateDir/daemon.log. A daemon that
// finds the plugin calling from another network namespace refuses.
//
// The daemon's socket is in the state directory (mode 0700): whoever may
// call it is whoever may run the plugin. The DNS server is the node's:
// dnsUpstreams and domain come from the first network that needs it.
// After upgrading the binaries, stop the daemon (SIGTERM to the PID in
// daemon.pid): the next call starts the new one.
//
// The daemon may also be run as a service (nsnet-cnid -state-dir DIR),
// for example by systemd, before the runtime's first call. Stopping it
// (SIGTERM) leaves the containers' networking as it is: the next daemon
// takes back the published ports' reservations, the names and the
// overlays from the attachments' records. A daemon that holds no
// attachment removes its overlay devices when it stops.
//
// # Configuration
//
// A plugin entry of type "nsnet-cni" (see examples/*.conflist):
//
//	mode          "bridge" (default), "macvlan" or "overlay"
//	stateDir      the node's state: IPAM file store, records, socket
//	              (default /var/lib/nsnet-cni)
//	subnets       [{"subnet", "gateway", "ipRange"}]; empty: the next free
//	              subnet of Docker's default pools (bridge, macvlan)
//	mtu, internal the containers' MTU; no egress (no masquerade, no DNS
//	              forwarding)
//	bridge, icc   bridge mode: the bridge's name, traffic between the
//	              network's containers (default true)
//	parent, macvlanMode   macvlan mode: the parent interface; bridge,
//	              private or vepa
//	vni, nodeName, vtep   overlay mode: the VXLAN ID; the node's name
//	              (default: host name) and underlay address (default: the
//	              address of the default route's interface)
//	store, etcd   "file" (default) or "etcd" with {"endpoints", "prefix"}:
//	              where addresses (and an overlay's control plane) live
//	dnsServer     serve the containers' names (and aliases); the result's
//	              dns names the server
//	dnsUpstreams  ["addr:port"] for other names; absent: the host's
//	              /etc/resolv.conf; []: no forwarding
//	domain        the names' domain (default nsnet.internal)
//
// Subnets may be IPv4, IPv6 or both (dual stack: an address of each,
// both default routes). Bridge networks are isolated from each other
// (nsnet's nftables table) and masqueraded unless internal.
// Capabilities: portMappings (bridge mode; tcp, udp, sctp; on hostIP, or
// without one on every host address of each family the container has),
// ips and mac (also args.cni.ips and CNI_ARGS
// IP=/MAC=), aliases, and dns (its searches and options go to the
// result). A container's DNS name is its K8S_POD_NAME (CNI_ARGS), then
// its aliases. On a bridge network the DNS server listens on the gateway
// address; on an overlay, which has no address on the host, on 127.0.0.11
// inside each container, and a name is claimed cluster-wide in the store
// (a second container of the cluster with that name is refused).
//
// # Commands
//
// ADD attaches the container (interfaces, addresses, default route), then
// publishes its ports and registers its names; a failure half way undoes
// what was done. Where nsnet-cni is not first in a chain, its interfaces
// and addresses are appended to prevResult. DEL succeeds when anything
// is already gone: the namespace, the interface, the network, the record.
// CHECK compares the kernel with the ADD's result (or prevResult): the
// interface, its MAC and addresses, the routes, the host side, the
// published ports; the error names the first drift. GC removes every
// attachment of the network not in cni.dev/valid-attachments, also those
// the node holds without a record, and removes the network from the node
// once nothing is left on it (the next ADD makes it again). STATUS
// answers 50 (plugin not available) when the state directory is not
// writable or the store does not answer.
//
// Errors are CNI error results: 1 (incompatible version), 2 (a capability
// the mode has not), 3 (CHECK of an unknown attachment), 4 (missing
// CNI_* variables), 5 (I/O), 6 (bad JSON), 7 (invalid configuration or
// argument, naming the field), 8 (bad netns), 11 (store or daemon not
// answering), 50 (STATUS), 100 (an address, port or name taken), 101 (no
// address left), 102 (the network exists with other settings, or
// overlaps another), 999 (other; the message names the cause).
//
// # Performance
//
// ADD through libcni, the exec of the plugin included, of 100 containers
// one after the other on one bridge network with masquerade and one
// published port each (BenchmarkAdd; what a CNI benchmark times
// for CNI's bridge + host-local + portmap):
//
//	go test -run '^$' -bench Add -benchtime 1x -count 3 ./cmd/nsnet-cni/
//
//	load average 2-3:
//	BenchmarkAdd-2  11.54 add-median-ms  20.53 del-median-ms  4.361 version-median-ms
//	BenchmarkAdd-2  11.58 add-median-ms  20.32 del-median-ms  4.280 version-median-ms
//	BenchmarkAdd-2  10.81 add-median-ms  20.23 del-median-ms  4.103 version-median-ms
//	load average 8.5 (the machine shared with other test suites):
//	BenchmarkAdd-2  15.19 add-median-ms  37.22 del-median-ms  4.810 version-median-ms
//	BenchmarkAdd-2  20.96 add-median-ms  36.14 del-median-ms  4.900 version-median-ms
//	BenchmarkAdd-2  14.32 add-median-ms  35.20 del-median-ms  4.709 version-median-ms
//	load average 15-19:
//	BenchmarkAdd-2  16.55 add-median-ms  42.79 del-median-ms  4.859 version-median-ms
//	BenchmarkAdd-2  19.48 add-median-ms  41.96 del-median-ms  5.624 version-median-ms
//	BenchmarkAdd-2  23.43 add-median-ms  42.53 del-median-ms  5.021 version-median-ms
//
// measured on the project's 2-core machine. version-median-ms is the
// floor, the plugin's exec for a VERSION call. The daemon's own work was
// 5.7 ms of an ADD at load 15-19 (NSNET_CNI_DEBUG=1 logs each call's
// time): the attach (veth pair, addresses, the IPAM file store's
// fdatasync) 4.1 ms, the published port 0.6, the record 0.4. When the
// plugin and its daemon were one 26 MB binary (etcd, gRPC and protobuf
// linked in), its exec alone took 12.8 ms and an ADD 28-36 ms: hence the
// thin plugin. DEL deletes the published port's conntrack entries, a walk
// of the machine's conntrack table (see portmap).
package main
