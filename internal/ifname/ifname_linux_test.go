package ifname_test

import (
	"strings"
	"testing"

	"github.com/nsnet/nsnet/internal/ifname"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestRandom(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		n := ifname.Random("veth", 7)
		if len(n) != 11 || !strings.HasPrefix(n, "veth") || ifname.Check(n) != "" {
			t.Fatalf("Random = %q", n)
		}
		seen[n] = true
	}
	if len(seen) < 99 {
		t.Fatalf("Random repeats itself: %d distinct of 100", len(seen))
	}
}

// FuzzCheck compares Check with the kernel: a name Check accepts is created
// under exactly that name, and a name the kernel refuses is refused by Check.
// Names with '%' are templates to the kernel ("eth%d"), which Check refuses
// on purpose, so only the first direction is asked of them.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"eth0", "veth1a2b3c4", "", ".", "..", "a/b", "a:b", "a b",
		"tab\tx", "nbsp\xa0", "exactly15bytes_", "sixteen_bytes_xx", "eth%d", "%", "ü", "-", "nul\x00x"} {
		f.Add(s)
	}
	// One sandbox for all inputs: the kernel frees namespaces
	// asynchronously, and a namespace per input makes fuzzing crawl.
	var host *netns.NS
	f.Cleanup(func() {
		if host != nil {
			host.Close()
		}
	})
	f.Fuzz(func(t *testing.T, name string) {
		if host == nil {
			nstest.Require(t)
			var err error
			if host, err = netns.New(); err != nil {
				t.Fatal(err)
			}
		}
		h, err := host.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		reason := ifname.Check(name)
		kerr := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		// Whatever the kernel made (a template gives another name) is the
		// link that lo is not.
		created := ""
		links, err := host.Links()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				created = l.Attrs().Name
				h.LinkDel(l)
			}
		}
		if reason == "" && (kerr != nil || created != name) {
			t.Fatalf("Check(%q) accepts it, but the kernel made %q, %v", name, created, kerr)
		}
		if reason == "" || strings.Contains(name, "%") {
			return
		}
		if kerr == nil && created == name && !strings.ContainsRune(name, 0) {
			t.Fatalf("Check(%q) = %q, but the kernel accepted it", name, reason)
		}
	})
}
