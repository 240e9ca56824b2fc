package macvlan_test

import (
	"testing"

	"github.com/nsnet/nsnet/netns/nstest"
)

// TestRootless runs macvlan networks across two hosts again as an unprivileged user that is root only
// in a user namespace of its own: nothing here needs the machine's root.
func TestRootless(t *testing.T) {
	nstest.Rootless(t, `^(TestTwoHosts|TestDualStack)$`)
}
