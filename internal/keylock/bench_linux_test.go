package keylock

import "testing"

// BenchmarkNested takes and gives back a host's, a network's and an
// endpoint's lock (a part of the network's), as an attach does.
func BenchmarkNested(b *testing.B) {
	for b.Loop() {
		unlock, err := Nested(Key{Name: "bench-host"}, Key{Name: "bench-host.net"}, Key{Part: "ep.c1", Exclusive: true})
		if err != nil {
			b.Fatal(err)
		}
		unlock(true)
	}
}
