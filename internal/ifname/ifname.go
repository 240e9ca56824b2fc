// Package ifname validates and generates Linux interface names.
package ifname

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
)

// MaxLen is the longest interface name the kernel accepts (IFNAMSIZ - 1).
const MaxLen = 15

// Check returns a description of what is wrong with name as a Linux
// interface name, or "" if the kernel would accept it. It follows the
// kernel's dev_valid_name: not empty, at most 15 bytes, not "." or "..",
// and no '/', ':' or white space.
func Check(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > MaxLen:
		return fmt.Sprintf("longer than %d bytes", MaxLen)
	case name == "." || name == "..":
		return "is . or .."
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '/' || c == ':':
			return fmt.Sprintf("contains %q", c)
		case c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0: // the kernel's isspace
			return "contains white space"
		case c == 0:
			return "contains a NUL byte"
		}
	}
	if strings.Contains(name, "%") {
		// A name with % is a template the kernel fills in ("eth%d"): the
		// result would not be the name the caller asked for.
		return "contains '%'"
	}
	return ""
}

// Random returns prefix followed by n random lowercase hex digits, as Docker
// names its host-side veths ("veth" + 7 digits). len(prefix)+n must not
// exceed MaxLen.
func Random(prefix string, n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return prefix + hex.EncodeToString(b)[:n]
}
