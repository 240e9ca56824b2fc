package ipam

// Lent to the external tests of this directory (etcd_test.go), which cannot
// be in package ipam because ipam/etcdstore imports it.
var (
	TestStore            = testStore
	MustPool             = mustPool
	MustAlloc            = mustAlloc
	CheckPool            = checkPool
	Pfx                  = pfx
	BenchAllocateRelease = benchAllocateRelease
	FillPoolForBench     = FillPool
	CrashOps             = crashOps
	CrashHarness         = crashHarness
)

type CrashKill = crashKill

// EtcdCrashChild is the crash child on the etcd store (see crashChild),
// which package ipam_test sets: it has the etcd client.
var EtcdCrashChild func(args []string) int
