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
)
