package netns_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestBadInput feeds nil and zero handles and paths that are not
// namespaces to every call: a *nsnet.ValidationError, no panic, nothing
// touched.
func TestBadInput(t *testing.T) {
	nstest.Require(t)
	for name, ns := range map[string]*netns.NS{"nil": nil, "zero": {}} {
		t.Run(name, func(t *testing.T) {
			calls := map[string]func() error{
				"Do":            func() error { return ns.Do(func() error { return nil }) },
				"Netlink":       func() error { _, err := ns.Netlink(); return err },
				"NFTables":      func() error { return ns.NFTables(nil) },
				"Links":         func() error { _, err := ns.Links(); return err },
				"Routes":        func() error { _, err := ns.Routes(0); return err },
				"RoutePrefixes": func() error { _, err := ns.RoutePrefixes(context.Background()); return err },
				"Sysctl":        func() error { _, err := ns.Sysctl("net.ipv4.ip_forward"); return err },
				"SetSysctl":     func() error { return ns.SetSysctl("net.ipv4.ip_forward", "1") },
				"Listen":        func() error { _, err := ns.Listen("tcp", "127.0.0.1:0"); return err },
				"ListenPacket":  func() error { _, err := ns.ListenPacket("udp", "127.0.0.1:0"); return err },
				"Dial":          func() error { _, err := ns.Dial(context.Background(), nil, "tcp", "127.0.0.1:1"); return err },
				"Dup":           func() error { _, err := ns.Dup(); return err },
				"LoopbackUp":    func() error { return ns.LoopbackUp() },
			}
			for call, f := range calls {
				var ve *nsnet.ValidationError
				if err := f(); !errors.As(err, &ve) {
					t.Errorf("%s on a %s NS: %v, want a *nsnet.ValidationError", call, name, err)
				}
			}
			if err := ns.Close(); err != nil {
				t.Errorf("Close on a %s NS: %v", name, err)
			}
			if ns.Fd() != -1 || ns.ID() != (netns.ID{}) || ns.Name() != "" || ns.Path() != "" {
				t.Errorf("a %s NS: Fd %d, ID %v, Name %q, Path %q", name, ns.Fd(), ns.ID(), ns.Name(), ns.Path())
			}
		})
	}
	// Closing a zero NS must not close descriptor 0.
	var st syscall.Stat_t
	if err := syscall.Fstat(0, &st); err != nil {
		t.Errorf("descriptor 0 after closing a zero NS: %v", err)
	}

	host := nstest.Host(t)
	var ve *nsnet.ValidationError
	var noCtx context.Context // a nil context is the bad input
	if _, err := host.Dial(noCtx, nil, "tcp", "127.0.0.1:1"); !errors.As(err, &ve) {
		t.Errorf("Dial with a nil context: %v", err)
	}
	if err := host.Do(nil); !errors.As(err, &ve) {
		t.Errorf("Do(nil): %v", err)
	}

	// Delete refuses what is not a namespace and leaves it.
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("data"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o700)
	placeholder := filepath.Join(dir, "placeholder")
	os.WriteFile(placeholder, nil, 0o600)
	for _, p := range []string{file, empty, placeholder} {
		if err := netns.Delete(p); !errors.As(err, &ve) {
			t.Errorf("Delete(%s): %v, want a *nsnet.ValidationError", p, err)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Delete(%s) removed it: %v", p, err)
		}
	}
	// In a namespace directory, an empty file is the mount point of a
	// namespace cut short: Dir.Delete removes it; anything else it refuses.
	d := netns.Dir(dir)
	if err := d.Delete("placeholder"); err != nil {
		t.Errorf("Dir.Delete of an empty mount point: %v", err)
	}
	if err := d.Delete("file"); !errors.As(err, &ve) {
		t.Errorf("Dir.Delete of a file with data: %v", err)
	}

	// Open does not block on a FIFO, and refuses it.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := netns.Open(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Open of a FIFO: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Open of a FIFO blocks")
	}
}
