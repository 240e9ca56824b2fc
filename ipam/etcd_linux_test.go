package ipam_test

// The etcd store against a real etcd server. These tests are in package
// ipam_test because etcdstore imports ipam; export_test.go lends them the
// store conformance suite and the helpers of ipam's own tests.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nsnet/nsnet/ipam"
	"github.com/nsnet/nsnet/ipam/etcdstore"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

func etcdStore(t testing.TB, c *clientv3.Client, prefix string) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.New(c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEtcdStore_nilClient(t *testing.T) {
	var verr *ipam.ValidationError
	if _, err := etcdstore.New(nil, "/x/"); !errors.As(err, &verr) {
		t.Fatalf("New(nil) = %v, want a *ipam.ValidationError", err)
	}
}

func TestEtcdStore(t *testing.T) {
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	n := 0
	ipam.TestStore(t, func(t *testing.T) ipam.Store {
		n++
		return etcdStore(t, c, fmt.Sprintf("/nsnet-test/%d/", n))
	})
}

// TestEtcdStore_threeClients: three allocators, each with its own etcd
// client (three hosts), allocate 2,000 addresses from one pool at once.
func TestEtcdStore_threeClients(t *testing.T) {
	srv := etcdtest.Start(t)
	const clients, workers, total = 3, 8, 2000
	var as []*ipam.Allocator
	for range clients {
		a, err := ipam.New(etcdStore(t, srv.Client(t), "/nsnet/"), ipam.Config{})
		if err != nil {
			t.Fatal(err)
		}
		as = append(as, a)
	}
	ipam.MustPool(t, as[0], ipam.PoolConfig{Name: "shared", Subnets: []ipam.SubnetConfig{{Subnet: ipam.Pfx("10.74.0.0/20")}}})

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	got, byAddr := map[string]string{}, map[string]string{}
	var wg sync.WaitGroup
	for c, a := range as {
		for w := range workers {
			wg.Go(func() {
				for i := range total / clients / workers {
					owner := fmt.Sprintf("h%d-%d-%d", c, w, i)
					al, err := a.Allocate(ctx, "shared", owner)
					if err != nil {
						t.Errorf("%s: %v", owner, err)
						return
					}
					ad := al.IPv4.Addr.Addr().String()
					mu.Lock()
					if prev, ok := byAddr[ad]; ok {
						t.Errorf("%s handed out twice: to %s and %s", ad, prev, owner)
					}
					byAddr[ad], got[owner] = owner, ad
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	ipam.CheckPool(t, as[1], "shared", got, total/clients/workers*clients*workers)
}

// TestEtcdStore_restart: allocations survive an etcd restart, and the
// allocator carries on after it.
func TestEtcdStore_restart(t *testing.T) {
	srv := etcdtest.Start(t)
	a, _ := ipam.New(etcdStore(t, srv.Client(t), "/nsnet/"), ipam.Config{})
	ipam.MustPool(t, a, ipam.PoolConfig{Name: "n", Subnets: []ipam.SubnetConfig{{Subnet: ipam.Pfx("10.75.0.0/24")}}})
	before := ipam.MustAlloc(t, a, "n", "c1")
	srv.Restart(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	after, err := a.Allocate(ctx, "n", "c1")
	if err != nil || after.IPv4.Addr != before.IPv4.Addr {
		t.Errorf("after restart: %v, %v; want %s", after.IPv4.Addr, err, before.IPv4.Addr)
	}
	if al, err := a.Allocate(ctx, "n", "c2"); err != nil || al.IPv4.Addr == before.IPv4.Addr {
		t.Errorf("c2 after restart: %v, %v", al.IPv4.Addr, err)
	}
}

func BenchmarkEtcdAllocateRelease(b *testing.B) {
	// One server for every run, stopped when the parent ends: a
	// sub-benchmark's cleanups run after each of its rounds.
	srv := etcdtest.Start(b)
	n := 0
	for _, callers := range []int{1, 8} {
		b.Run(fmt.Sprintf("%dcallers", callers), func(b *testing.B) {
			n++
			a, err := ipam.New(etcdStore(b, srv.Client(b), fmt.Sprintf("/nsnet-bench/%d/", n)), ipam.Config{})
			if err != nil {
				b.Fatal(err)
			}
			ipam.MustPool(b, a, ipam.PoolConfig{Name: "n", Subnets: []ipam.SubnetConfig{{Subnet: ipam.Pfx("10.60.0.0/16")}}})
			ipam.BenchAllocateRelease(b, a, callers)
		})
	}
}

// BenchmarkEtcdAllocateReleaseFill is BenchmarkEtcdAllocateRelease in a
// /16 that holds 1%, 50% or 99% of its addresses already.
func BenchmarkEtcdAllocateReleaseFill(b *testing.B) {
	srv := etcdtest.Start(b)
	n := 0
	for _, pct := range []int{1, 50, 99} {
		for _, callers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%dpct/%dcallers", pct, callers), func(b *testing.B) {
				n++
				s := etcdStore(b, srv.Client(b), fmt.Sprintf("/nsnet-bench-fill/%d/", n))
				ipam.FillPoolForBench(b, s, pct)
				a, err := ipam.New(s, ipam.Config{})
				if err != nil {
					b.Fatal(err)
				}
				ipam.BenchAllocateRelease(b, a, callers)
			})
		}
	}
}

func init() { ipam.EtcdCrashChild = etcdCrashChild }

// etcdCrashChild runs ipam.CrashOps on the etcd store (args: the server's
// namespace, as a path to open, the key prefix and the seed).
func etcdCrashChild(args []string) int {
	ns, err := netns.Open(args[0])
	if err != nil {
		fmt.Println("fail", err)
		return 1
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{fmt.Sprintf("http://127.0.0.1:%d", etcdtest.ClientPort)},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.Dial(ctx, nil, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		fmt.Println("fail", err)
		return 1
	}
	st, err := etcdstore.New(c, args[1])
	if err != nil {
		fmt.Println("fail", err)
		return 1
	}
	a, _ := ipam.New(st, ipam.Config{})
	seed, _ := strconv.ParseUint(args[2], 10, 64)
	ipam.CrashOps(a, seed)
	return 0
}

// TestEtcdStore_crashPoints: the crash harness of the file store (see
// TestFileStore_crashPoints) on the etcd store, a real server: a child
// killed (SIGKILL) at random moments while it creates and deletes pools
// and allocates and releases, 100 times; after each, GC with the
// acknowledged owners leaves exactly what the answered calls made, the
// call cut short done or not.
func TestEtcdStore_crashPoints(t *testing.T) {
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	kills := make([]ipam.CrashKill, 100)
	for i := range kills {
		kills[i].Step = "-"
	}
	ipam.CrashHarness(t, kills, func(i int, _ ipam.CrashKill) string {
		return fmt.Sprintf("etcd /proc/%d/fd/%d /crash/ %d", os.Getpid(), srv.NS().Fd(), i)
	}, func(t *testing.T) (*ipam.Allocator, func()) {
		a, err := ipam.New(etcdStore(t, c, "/crash/"), ipam.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return a, func() {}
	})
}
