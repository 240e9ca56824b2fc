package bridge

import (
	"context"
	"testing"

	"github.com/nsnet/nsnet/ipam"
)

// newAlloc returns an allocator on a memory store.
func newAlloc(t testing.TB) *ipam.Allocator {
	t.Helper()
	a, err := ipam.New(ipam.NewMemoryStore(), ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fileAlloc returns an allocator on a file store in dir, closed at cleanup.
func fileAlloc(t testing.TB, dir string) *ipam.Allocator {
	t.Helper()
	a, closeFn, err := openFileAlloc(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	return a
}

func openFileAlloc(dir string) (*ipam.Allocator, func() error, error) {
	st, err := ipam.OpenFileStore(dir)
	if err != nil {
		return nil, nil, err
	}
	a, err := ipam.New(st, ipam.Config{})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return a, st.Close, nil
}

// held returns the addresses owner holds in the network's pool.
func held(t testing.TB, n *Network, id string) []ipam.Allocation {
	t.Helper()
	_, allocs, err := n.alloc.Inspect(context.Background(), n.pool)
	if err != nil {
		t.Fatal(err)
	}
	var out []ipam.Allocation
	for _, al := range allocs {
		if al.Owner == endpointOwner(n.cfg.Name, id) {
			out = append(out, al)
		}
	}
	return out
}
