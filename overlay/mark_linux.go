package overlay

import (
	"encoding/json"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	"github.com/nsnet/nsnet/internal/keylock"
	"github.com/nsnet/nsnet/internal/netlock"
	"github.com/nsnet/nsnet/netns"
)

// Every link the overlay driver makes is its own from the moment it
// exists: the request that creates it gives it the driver's device group
// (IFLA_GROUP, `ip link show group N`), a tag in the high byte and a hash
// of the owner below. The tag is not the one of bridge's and macvlan's
// links (internal/ctrlink), so that their GC leaves overlay links alone,
// and this package's leaves theirs. A network's bridge and VXLAN device
// are named by the VNI and grouped by it; an endpoint's host veth is named
// and grouped by its network and ID, and its interface alias, written by a
// second request, holds the mark naming them (epMark).
const groupTag = 0x6f // 'o'

// group returns the device group of the links made for owner.
func group(owner string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("nsnet/overlay/" + owner))
	return groupTag<<24 | h.Sum32()&0xffffff
}

// isGroup reports whether g is the overlay driver's.
func isGroup(g uint32) bool { return g>>24 == groupTag }

// netGroup is the group of the devices of the network with VNI vni.
func netGroup(vni uint32) uint32 { return group("vni/" + strconv.FormatUint(uint64(vni), 10)) }

// epGroup is the group of an endpoint's host veth.
func epGroup(network, id string) uint32 { return group("ep/" + network + "/" + id) }

// vniOf returns the VNI in the name of a network's bridge or VXLAN
// device, or false.
func vniOf(name string) (uint32, bool) {
	for _, p := range []string{"ovbr", "ovvx"} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			v, err := strconv.ParseUint(rest, 16, 24)
			if err == nil && v > 0 && name == p+strconv.FormatUint(v, 16) {
				return uint32(v), true
			}
		}
	}
	return 0, false
}

const markerEP = "overlay-endpoint"

// epMark is the interface alias of an endpoint's host veth.
type epMark struct {
	Kind   string `json:"nsnet"`
	Net    string `json:"net"`
	ID     string `json:"id"`
	IfName string `json:"if"`
	MAC    string `json:"mac"`
}

func (m epMark) encode() string {
	m.Kind = markerEP
	b, _ := json.Marshal(m) // names of at most 64 bytes: within an alias's 255
	return string(b)
}

func decodeEPMark(alias string) (epMark, bool) {
	var m epMark
	if !strings.HasPrefix(alias, `{"nsnet":`) || json.Unmarshal([]byte(alias), &m) != nil || m.Kind != markerEP {
		return epMark{}, false
	}
	return m, true
}

// The overlay's locks on a host (lock files, see keylock.File): Attach
// and Detach hold an endpoint's, and the overlay's host lock shared; GC
// holds that exclusive, so that it never sees an attach or detach of this
// host half way. The host lock is the overlay's own, not netlock's, which
// bridge takes: GC detaches endpoints from the gateway bridge (a bridge
// network) while it holds its lock.
var locks = netlock.Kind("overlay")

func hostLock(ns *netns.NS, exclusive bool) keylock.Key {
	return keylock.Key{Name: netlock.HostKey(ns) + ".overlay-host", Exclusive: exclusive}
}

// lockEndpoint takes the locks of an Attach or Detach.
func lockEndpoint(ns *netns.NS, network, id string) (func(remove bool), error) {
	return keylock.Nested(hostLock(ns, false), keylock.Key{Name: locks.Prefix(ns) + "." + network + ".ep." + id, Exclusive: true})
}

// lockHost takes GC's lock.
func lockHost(ns *netns.NS) (func(remove bool), error) { return keylock.Nested(hostLock(ns, true)) }

// stepHooks holds, by network name, a func(step string) error that a test
// set: Create, Attach, Detach and Delete call it at their steps (named),
// to hold the call there or to kill the process there.
var stepHooks sync.Map

// step calls the network's step hook, if a test set one.
func step(network, name string) error {
	if f, ok := stepHooks.Load(network); ok {
		return f.(func(string) error)(name)
	}
	return nil
}
