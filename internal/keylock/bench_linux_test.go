package keylock

import "testing"

// BenchmarkNested takes and gives back a host's, a network's and an
// endpoint's lock, as an attach does.
func BenchmarkNested(b *testing.B) {
	for b.Loop() {
		unlock, err := Nested(Key{Name: "bench-host"}, Key{Name: "bench-host.net"}, Key{Name: "bench-host.net.ep", Exclusive: true})
		if err != nil {
			b.Fatal(err)
		}
		unlock(true)
	}
}
