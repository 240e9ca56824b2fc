//go:build linux

package nstest

import "github.com/nsnet/nsnet/netns"

// UseMachine points the machine checks at ns and dir instead of the
// process's own namespace and /var/run/netns, until restore is called.
// Only for tests that do not run in parallel.
func UseMachine(ns *netns.NS, dir netns.Dir) (restore func()) {
	saved := machineEnv
	machineEnv.open = func() (*netns.NS, error) { return ns, nil }
	machineEnv.dir = dir
	return func() { machineEnv = saved }
}
