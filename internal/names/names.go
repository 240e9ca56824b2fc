// Package names checks the names nsnet takes from its callers (networks,
// endpoints, pools) against Docker's rule for network names.
package names

import "strconv"

// Check returns what is wrong with name, or "": Docker's rule is 1 to max
// bytes of ASCII letters, digits, '_', '.' and '-', starting with a letter
// or digit.
func Check(name string, max int) string {
	if name == "" || len(name) > max {
		return "must be 1 to " + strconv.Itoa(max) + " bytes long"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '.' || c == '-')) {
			return "may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"
		}
	}
	return ""
}
