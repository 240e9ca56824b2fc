package bridge_test

import (
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
)

// TestRootless runs a user-defined network, isolation, internal networks, the network modes, removal and dual stack again as an unprivileged user that is root only
// in a user namespace of its own: nothing here needs the machine's root.
func TestRootless(t *testing.T) {
	nstest.Rootless(t, `^(TestUserDefinedNetworks|TestIsolation|TestInternal|TestModes|TestRemoval|TestDualStack)$`)
}
