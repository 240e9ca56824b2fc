package bridge

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Marks are what a later process reads back to find what nsnet built:
// the bridge's and the host-side veth's interface alias (IFLA_IFALIAS) hold
// a small JSON object starting with the marker "nsnet".

const (
	aliasMax     = 255
	markerBridge = "bridge"
	markerEP     = "endpoint"
)

// netMark is written on a network's bridge.
type netMark struct {
	Kind       string            `json:"nsnet"`
	Name       string            `json:"name"`
	Internal   bool              `json:"internal,omitempty"`
	DisableICC bool              `json:"noicc,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// epMark is written on an endpoint's host-side veth.
type epMark struct {
	Kind    string `json:"nsnet"`
	Net     string `json:"net"`
	ID      string `json:"id"`
	IfName  string `json:"if"`
	MAC     string `json:"mac"`
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

// decodeNetMark returns the mark of a bridge, or false if the alias is not
// an nsnet bridge mark.
func decodeNetMark(alias string) (netMark, bool) {
	var m netMark
	if !strings.HasPrefix(alias, `{"nsnet":`) || json.Unmarshal([]byte(alias), &m) != nil || m.Kind != markerBridge {
		return netMark{}, false
	}
	return m, true
}

// decodeEPMark returns the mark of a host-side veth, or false.
func decodeEPMark(alias string) (epMark, bool) {
	var m epMark
	if !strings.HasPrefix(alias, `{"nsnet":`) || json.Unmarshal([]byte(alias), &m) != nil || m.Kind != markerEP {
		return epMark{}, false
	}
	return m, true
}
