package dnsd_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/dnsd"
)

func TestDefaultUpstreams(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	os.WriteFile(path, []byte("# host\nnameserver 127.0.0.53\nnameserver 192.0.2.1 # first\nnameserver ::1\n"+
		"nameserver 2001:db8::1\nnameserver bogus\nsearch example.com corp\noptions ndots:2 edns0\n"), 0o644)
	srv, err := dnsd.New(dnsd.Config{ResolvConf: path})
	if err == nil {
		srv.Close()
		t.Fatal("New without NS but with upstreams succeeded")
	}
	var ve *dnsd.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("New: %v, want a *ValidationError", err)
	}
	rc, err := dnsd.ReadResolvConf(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rc.Search, []string{"example.com", "corp"}) || !slices.Equal(rc.Options, []string{"ndots:2", "edns0"}) || len(rc.Nameservers) != 4 {
		t.Errorf("ReadResolvConf: %+v", rc)
	}
	// No NS needed to read the configuration: use a Server only for its
	// Upstreams (a nil-namespace server cannot forward; New refuses).
	os.WriteFile(path, []byte("nameserver 127.0.0.1\nnameserver ::1\n"), 0o644)
	srv, err = dnsd.New(dnsd.Config{ResolvConf: path})
	if err != nil {
		t.Fatalf("New with only loopback resolvers: %v", err)
	}
	if got := srv.Upstreams(); len(got) != 0 {
		t.Errorf("loopback resolvers kept: %v", got)
	}
	srv.Close()
}

func TestDefaultUpstreams_skipLoopback(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("nameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nnameserver 2001:db8::1\n"), 0o644)
	got, err := dnsd.DefaultUpstreams(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53"), netip.MustParseAddrPort("[2001:db8::1]:53")}
	if !slices.Equal(got, want) {
		t.Errorf("DefaultUpstreams: %v, want %v", got, want)
	}
	if _, err := dnsd.DefaultUpstreams(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestWriteFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rc := dnsd.ResolvConf{Nameservers: []netip.Addr{netip.MustParseAddr("127.0.0.11")},
		Search: []string{"nsnet.internal", "example.com"}, Options: []string{"ndots:0"}}
	for range 2 { // over an existing file too
		if err := dnsd.WriteResolvConf(dir, rc); err != nil {
			t.Fatal(err)
		}
	}
	got, err := dnsd.ReadResolvConf(filepath.Join(dir, "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Nameservers, rc.Nameservers) || !slices.Equal(got.Search, rc.Search) || !slices.Equal(got.Options, rc.Options) {
		t.Errorf("read back %+v, want %+v", got, rc)
	}
	if err := dnsd.WriteResolvConf(dir, dnsd.ResolvConf{Options: []string{"a b"}}); err == nil {
		t.Error("an option with a space was written")
	}

	h := dnsd.Hosts{Name: "web", ID: "4f1c2a", Addrs: []netip.Addr{netip.MustParseAddr("172.18.0.2")},
		Extra: []dnsd.HostEntry{{Addr: netip.MustParseAddr("172.17.0.5"), Names: []string{"test5", "alias5"}}}}
	if err := dnsd.WriteHosts(dir, h); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "hosts"))
	for _, line := range []string{"127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "172.18.0.2\t4f1c2a web", "172.17.0.5\ttest5 alias5"} {
		if !slices.Contains(strings.Split(string(b), "\n"), line) {
			t.Errorf("hosts lacks %q:\n%s", line, b)
		}
	}
	if err := dnsd.WriteHosts(dir, dnsd.Hosts{Extra: []dnsd.HostEntry{{Addr: netip.MustParseAddr("10.0.0.1"), Names: []string{"a\nb"}}}}); err == nil {
		t.Error("a name with a newline was written")
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"hosts", "resolv.conf"}) {
		t.Errorf("dir holds %v", names)
	}
	if err := dnsd.WriteHosts(filepath.Join(dir, "missing"), h); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("into a missing dir: %v", err)
	}
}
