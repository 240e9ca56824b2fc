package bridge

import (
	"context"
	"fmt"

	"github.com/nsnet/nsnet/netns"
)

// The network modes of `docker run --network`, made explicit. A container
// namespace is whatever netns.NS the caller hands to Attach; these helpers
// give the three modes that are not a network.

// None prepares ctr for --network none: lo up, and no other interface. It
// fails with ErrExists if ctr has other interfaces.
func None(ctx context.Context, ctr *netns.NS) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	links, err := ctr.Links()
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			return fmt.Errorf("bridge: --network none: %s has interface %s: %w", ctr, l.Attrs().Name, ErrExists)
		}
	}
	return ctr.LoopbackUp()
}

// HostMode returns the namespace of a --network host container: a handle to
// host itself. The container shares the host's interfaces and addresses,
// and its listening ports collide with the host's. Attach refuses it with
// ErrHostMode.
func HostMode(host *netns.NS) (*netns.NS, error) { return host.Dup() }

// Join returns the namespace of a --network container:OWNER container: a
// handle to owner's namespace. Both see the same interfaces and talk over
// 127.0.0.1; a port one uses, the other cannot. When the owner's endpoints
// are detached, the joiner is left with lo only.
func Join(owner *netns.NS) (*netns.NS, error) { return owner.Dup() }
