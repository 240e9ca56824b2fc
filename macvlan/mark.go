package macvlan

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Marks are what a later process reads back to find what nsnet built: the
// anchor's and the container interfaces' interface alias (IFLA_IFALIAS)
// hold a small JSON object starting with the marker "nsnet".

const (
	aliasMax     = 255
	markerNet    = "macvlan"
	markerEP     = "macvlan-endpoint"
	shimSuffix   = ".shim" // owner of the shim's address: no endpoint ID starts with '.'
	baseMetric   = 10000   // metric of a default route of GatewayPriority 0, as in bridge
	poolPrefix   = "macvlan."
	anchorPrefix = "mv-"
)

// netMark is written on a network's anchor.
type netMark struct {
	Kind   string            `json:"nsnet"`
	Name   string            `json:"name"`
	Mode   Mode              `json:"mode"`
	Labels map[string]string `json:"labels,omitempty"`
}

// epMark is written on a container's interface.
type epMark struct {
	Kind    string `json:"nsnet"`
	Net     string `json:"net"`
	ID      string `json:"id"`
	Gateway bool   `json:"gw,omitempty"`
	Prio    int    `json:"prio,omitempty"`
}

func encodeMark(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if len(b) > aliasMax {
		return "", fmt.Errorf("%d bytes, more than the %d an interface alias holds", len(b), aliasMax)
	}
	return string(b), nil
}

// decodeNetMark returns the mark of an anchor, or false if the alias is
// not an nsnet macvlan network mark.
func decodeNetMark(alias string) (netMark, bool) {
	var m netMark
	if !strings.HasPrefix(alias, `{"nsnet":`) || json.Unmarshal([]byte(alias), &m) != nil || m.Kind != markerNet {
		return netMark{}, false
	}
	return m, true
}

// decodeEPMark returns the mark of a container's interface, or false.
func decodeEPMark(alias string) (epMark, bool) {
	var m epMark
	if !strings.HasPrefix(alias, `{"nsnet":`) || json.Unmarshal([]byte(alias), &m) != nil || m.Kind != markerEP {
		return epMark{}, false
	}
	return m, true
}
