//go:build !linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// Network namespaces are a Linux feature. Elsewhere this package compiles,
// so that programs that embed nsnet build on developers' machines too, and
// every call that would need the kernel returns an error matching
// errors.ErrUnsupported.

// DefaultDir is where named namespaces live on Linux.
const DefaultDir = "/var/run/netns"

// ID identifies a namespace.
type ID struct {
	Dev uint64
	Ino uint64
}

// String renders the ID the way /proc/PID/ns/net links do: "net:[4026531840]".
func (id ID) String() string { return fmt.Sprintf("net:[%d]", id.Ino) }

// NS is a handle to one network namespace; there are none off Linux.
type NS struct{}

// Dir is a directory of named namespaces.
type Dir string

func unsupported(op string) error {
	return &OpError{Op: op, Err: errors.ErrUnsupported}
}

func New() (*NS, error)                          { return nil, unsupported("netns.new") }
func Open(nameOrPath string) (*NS, error)        { return nil, unsupported("netns.open") }
func OpenPID(pid int) (*NS, error)               { return nil, unsupported("netns.open") }
func Current() (*NS, error)                      { return nil, unsupported("netns.current") }
func Delete(nameOrPath string) error             { return unsupported("netns.delete") }
func (d Dir) New(name string) (*NS, error)       { return nil, unsupported("netns.new") }
func (d Dir) Open(name string) (*NS, error)      { return nil, unsupported("netns.open") }
func (d Dir) Delete(name string) error           { return unsupported("netns.delete") }
func (d Dir) List() ([]string, error)            { return nil, unsupported("netns.list") }
func (ns *NS) ID() ID                            { return ID{} }
func (ns *NS) Equal(other *NS) bool              { return ns == other }
func (ns *NS) Name() string                      { return "" }
func (ns *NS) Path() string                      { return "" }
func (ns *NS) String() string                    { return "<unsupported>" }
func (ns *NS) Fd() int                           { return -1 }
func (ns *NS) Dup() (*NS, error)                 { return nil, unsupported("netns.dup") }
func (ns *NS) Close() error                      { return nil }
func (ns *NS) Do(fn func() error) error          { return unsupported("netns.do") }
func (ns *NS) LoopbackUp() error                 { return unsupported("netns.loopback") }
func (ns *NS) Sysctl(key string) (string, error) { return "", unsupported("netns.sysctl") }
func (ns *NS) SetSysctl(key, value string) error { return unsupported("netns.sysctl") }
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	return nil, unsupported("netns.listen")
}
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	return nil, unsupported("netns.listen")
}
func (ns *NS) Dial(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	return nil, unsupported("netns.dial")
}
