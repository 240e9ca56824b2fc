// Package netns creates, opens and deletes Linux network namespaces, and runs
// code in them without leaving any goroutine in a foreign namespace.
//
// An [NS] is a handle to one namespace: it holds a file descriptor, and
// lazily a netlink handle ([NS.Netlink]) and an nftables connection
// ([NS.NFTables]) whose sockets were opened in that namespace. Everything
// else in nsnet takes an *NS and does its work through these sockets, so no
// operation depends on the namespace of the calling thread. This is also why
// a whole "host" can be a sandbox namespace: every nsnet test and example
// runs that way.
//
// # Namespaces
//
// New creates an anonymous namespace, alive while a handle (or a process,
// or a bind mount) refers to it. [Dir.New] creates a named one, bind-mounted
// under a run directory, like `ip netns add`; the zero [Dir] is
// /var/run/netns, which `ip netns` uses, and embedders and tests can keep
// their own directory. [Open] opens by name or path, [OpenPID] by process,
// [Current] the process's own namespace.
//
// [NS.Do] runs a function on an OS thread switched into the namespace and
// switches back, also when the function panics. If switching back fails, the
// thread is never unlocked, so the Go runtime retires it with its goroutine:
// no other goroutine can ever run in the wrong namespace. The function
// never runs on the process's main thread, which the runtime cannot retire
// (it would stay in the namespace for the life of the process, and
// /proc/PID/ns/net would name it): a Do that the scheduler starts there
// holds the main thread idle and runs the function on another thread. Do
// is the only place in nsnet that calls setns.
//
// # Privileges
//
// Creating, entering and deleting namespaces needs CAP_SYS_ADMIN; the
// netlink and nftables work done through an NS needs CAP_NET_ADMIN in it.
// Unprivileged calls fail with an error matching os.ErrPermission.
//
// # Idempotency
//
// Creating a named namespace that exists fails with [ErrExists]; deleting one
// that is gone succeeds. [NS.Close] may be called more than once.
//
// # Concurrency
//
// An NS is safe for concurrent use. Its netlink handle is too; its nftables
// connection is handed out only inside [NS.NFTables], one batch at a time.
//
// # Performance
//
// Measured on the project's 2-core machine with
// `sudo go test -run '^$' -bench . -benchmem ./netns/`:
// see BenchmarkDo and BenchmarkNewNamed; the figures are in the README.
package netns
