//go:build linux

package node

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
)

func zapNop() *zap.Logger { return zap.NewNop() }

// record is what the node keeps of one attachment (network, container,
// interface): enough for DEL, CHECK and GC to act without the runtime's
// help, and for a restarted daemon to take back what it held.
type record struct {
	Network     string
	Mode        string
	ContainerID string
	IfName      string
	Netns       string
	EndpointID  string
	// Result is the ADD's result (types/100).
	Result json.RawMessage
	// Addrs are the container's addresses on the network.
	Addrs []string
	// Ports are the published ports.
	Ports []recPort `json:",omitempty"`
	// Names are the DNS names: the first is the endpoint's name, the rest
	// its aliases.
	Names []string `json:",omitempty"`
	// DNS is set when the network's DNS server serves the attachment.
	DNS bool `json:",omitempty"`
	// Conf is the network configuration of the ADD.
	Conf json.RawMessage
}

type recPort struct {
	Proto    string
	HostAddr string `json:",omitempty"`
	HostPort int
	CtrAddr  string
	CtrPort  int
	ID       string
}

// validFileName: container IDs are [a-zA-Z0-9_.-]; anything else (or a
// name that would leave the directory) is hashed.
func fileName(containerID, ifName string) string {
	n := containerID + "_" + ifName
	ok := len(n) < 200
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			ok = false
		}
	}
	if !ok || strings.HasPrefix(n, ".") {
		return endpointID("", containerID, ifName) + ".json"
	}
	return n + ".json"
}

func (d *daemon) recordPath(network, containerID, ifName string) string {
	return filepath.Join(d.dir, "attachments", network, fileName(containerID, ifName))
}

func (d *daemon) readRecord(network, containerID, ifName string) (*record, error) {
	b, err := os.ReadFile(d.recordPath(network, containerID, ifName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// writeRecord writes r atomically (a temporary file renamed), without
// fsync: a record describes kernel objects (veths, rules) that a power
// loss takes away as well, and a crashed daemon's writes are in the page
// cache. The addresses, which do outlive a reboot, are the IPAM store's,
// which is durable.
func (d *daemon) writeRecord(r *record) error {
	path := d.recordPath(r.Network, r.ContainerID, r.IfName)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

func (d *daemon) removeRecord(network, containerID, ifName string) error {
	err := os.Remove(d.recordPath(network, containerID, ifName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// records returns the attachments of a network ("": of all networks).
func (d *daemon) records(network string) ([]*record, error) {
	pattern := filepath.Join(d.dir, "attachments", "*", "*.json")
	if network != "" {
		pattern = filepath.Join(d.dir, "attachments", network, "*.json")
	}
	files, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r record
		if json.Unmarshal(b, &r) == nil {
			out = append(out, &r)
		}
	}
	return out, nil
}
