package ctrlink

import "hash/fnv"

// Links that nsnet creates carry its mark from the moment they exist: their
// device group (IFLA_GROUP, `ip link show group N`), which the kernel takes
// in the request that creates a link, unlike the interface alias
// (IFLA_IFALIAS), which it ignores there and which nsnet writes by a second
// request. A process killed between the two leaves a link with nsnet's
// group and no alias: a later call of its owner, or the host's GC, knows it
// as nsnet's, half made, and adopts or removes it.
//
// The group's high byte is nsnet's tag; the low 24 bits are a hash of the
// owner ("bridge/NET", "bridge/NET/ENDPOINT", ...), so that a half-made
// link says whose it is.
const groupTag = 0x6e // 'n'

// Group returns the device group of the links that owner makes.
func Group(owner string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("nsnet/" + owner))
	return groupTag<<24 | h.Sum32()&0xffffff
}

// IsGroup reports whether group is an nsnet group.
func IsGroup(group uint32) bool { return group>>24 == groupTag }
