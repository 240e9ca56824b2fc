package netns_test

import (
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// BenchmarkNewNamed creates a named namespace and deletes it again, like
// `ip netns add` and `ip netns delete`.
func BenchmarkNewNamed(b *testing.B) {
	dir := nstest.Dir(b)
	b.ReportAllocs()
	for b.Loop() {
		ns, err := dir.New("bench")
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
		if err := dir.Delete("bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNew creates an anonymous namespace and closes it.
func BenchmarkNew(b *testing.B) {
	nstest.Require(b)
	b.ReportAllocs()
	for b.Loop() {
		ns, err := netns.New()
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
	}
}

// BenchmarkDo is one round trip into a namespace and back.
func BenchmarkDo(b *testing.B) {
	ns := nstest.Host(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := ns.Do(func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
