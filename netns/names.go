package netns

import "strings"

// checkName refuses names that are not a single path element.
func checkName(name string) error {
	reason := ""
	switch {
	case name == "":
		reason = "empty"
	case len(name) > 255:
		reason = "longer than 255 bytes"
	case name == "." || name == "..":
		reason = "is . or .."
	case strings.ContainsRune(name, '/'):
		reason = "contains '/'"
	case strings.ContainsRune(name, 0):
		reason = "contains a NUL byte"
	default:
		return nil
	}
	return &ValidationError{Pkg: "netns", Field: "name", Value: name, Reason: reason}
}
