package names

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"my-net_1.2", true},
		{"0net", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"-net", false},
		{".net", false},
		{"net work", false},
		{"net/work", false},
		{"réseau", false},
	} {
		if got := Check(c.name, 64); (got == "") != c.ok {
			t.Errorf("Check(%q, 64) = %q, want ok=%v", c.name, got, c.ok)
		}
	}
}
