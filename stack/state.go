package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsnet/nsnet/bridge"
	"github.com/nsnet/nsnet/portmap"
)

// state is what stack.json holds: enough to rebuild the stack's names,
// listeners, reservations and rules after a restart. The kernel objects
// (bridges, veths) and the addresses (the IPAM file store) keep their own.
type state struct {
	Networks   map[string]savedNetwork   `json:"networks"`
	Containers map[string]savedContainer `json:"containers"`
}

type savedNetwork struct {
	Internal bool `json:"internal,omitempty"`
	// Bridge is the network's settings as made (bridge name, subnets with
	// gateways, MTU, MAC), so that Open can make a network whose bridge
	// went (a crash in DeleteNetwork, or someone else) again as it was.
	// Nil in the state of an older release.
	Bridge *bridge.Config `json:"bridge,omitempty"`
}

type savedContainer struct {
	Name      string            `json:"name"`
	Endpoints []Endpoint        `json:"endpoints"`
	Ports     []portmap.Mapping `json:"ports,omitempty"`
}

const stateFile = "stack.json"

func loadState(dir string) (state, error) {
	st := state{Networks: map[string]savedNetwork{}, Containers: map[string]savedContainer{}}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("stack: %s: %w", filepath.Join(dir, stateFile), err)
	}
	if st.Networks == nil {
		st.Networks = map[string]savedNetwork{}
	}
	if st.Containers == nil {
		st.Containers = map[string]savedContainer{}
	}
	return st, nil
}

// save writes st durably: a new file (never one planted in its place: it
// must not exist, and no link is followed), fsynced, renamed over the old
// one, and the directory fsynced.
func (st state) save(dir string) error {
	b, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|nofollow, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, stateFile))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("stack: saving state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
