package bridge

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestChurn: goroutines attach and detach endpoints at random, each
// owning a few; at every quiet point between rounds, the kernel (List),
// Inspect, the IPAM and the model agree, and every attached endpoint
// checks clean.
func TestChurn(t *testing.T) {
	t.Parallel()
	host := nstest.Host(t)
	alloc := newAlloc(t)
	n := newNet(t, host, alloc, Config{Name: "churn", Subnets: subnet("10.46.0.0/24", "")})
	const workers, each, rounds, ops = 4, 3, 6, 6
	ctrs := map[string]*netns.NS{}
	for w := range workers {
		for i := range each {
			ctrs[fmt.Sprintf("w%d-%d", w, i)] = nstest.Container(t, host)
		}
	}
	model := map[string]bool{}
	var mu sync.Mutex
	for round := range rounds {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for range ops {
					id := fmt.Sprintf("w%d-%d", w, r.IntN(each))
					var err error
					attached := r.IntN(2) == 0
					if attached {
						_, err = n.Attach(t.Context(), EndpointConfig{ID: id, NS: ctrs[id]})
					} else {
						err = n.Detach(t.Context(), id)
					}
					if err != nil {
						t.Errorf("%s %v: %v", id, attached, err)
						return
					}
					mu.Lock()
					model[id] = attached
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		var want []string
		for id, on := range model {
			if on {
				want = append(want, id)
			}
		}
		slices.Sort(want)
		info, err := n.Inspect(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range info.Endpoints {
			got = append(got, e.ID)
			if len(e.Addrs) != 1 {
				t.Errorf("round %d: %s has addresses %v", round, e.ID, e.Addrs)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: Inspect has %v, the model %v", round, got, want)
		}
		_, allocs, err := alloc.Inspect(t.Context(), n.pool)
		if err != nil {
			t.Fatal(err)
		}
		var owners []string
		for _, a := range allocs {
			owners = append(owners, a.Owner)
		}
		slices.Sort(owners)
		var wantOwners []string
		for _, id := range want {
			wantOwners = append(wantOwners, endpointOwner("churn", id))
		}
		if !slices.Equal(owners, wantOwners) {
			t.Fatalf("round %d: the IPAM has %v, the model %v", round, owners, wantOwners)
		}
		for id, c := range ctrs {
			names := nstest.LinkNames(t, c)
			if model[id] != (len(names) == 2) {
				t.Fatalf("round %d: container %s has %v, attached: %v", round, id, names, model[id])
			}
			if model[id] {
				if err := n.CheckEndpoint(t.Context(), id, c); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
		}
	}
}
