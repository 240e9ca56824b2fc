package dnsd_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/nsnet/nsnet"
	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/netns/nstest"
)

// TestBadInputTable: nil and zero servers and listeners, nil and zero
// namespaces, bad names, addresses and contexts: a *nsnet.ValidationError
// (or the sentinel named), no panic, the host as it was, and the server's
// answers unchanged.
func TestBadInputTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	host := nstest.Host(t)
	srv, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	subnet := netip.MustParsePrefix("10.53.0.0/24")
	if err := srv.AddNetwork("n", []netip.Prefix{subnet}, false); err != nil {
		t.Fatal(err)
	}
	if err := srv.Register("n", dnsd.Endpoint{Name: "web", Addrs: []netip.Addr{netip.MustParseAddr("10.53.0.2")}}); err != nil {
		t.Fatal(err)
	}
	var nilSrv *dnsd.Server
	var zeroSrv dnsd.Server
	var nilLn *dnsd.Listener
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	client := []netip.Addr{netip.MustParseAddr("10.53.0.3")}
	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	answer := func() string {
		b := srv.Handle(ctx, wire, client, true)
		if len(b) < 2 {
			return ""
		}
		return string(b[2:]) // all but the ID
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error // nil: a *nsnet.ValidationError
	}{
		{"nil Server AddNetwork", func() error { return nilSrv.AddNetwork("x", []netip.Prefix{subnet}, false) }, nil},
		{"zero Server Register", func() error { return zeroSrv.Register("n", dnsd.Endpoint{Name: "a"}) }, nil},
		{"nil Server ListenHost", func() error {
			_, err := nilSrv.ListenHost(ctx, host, netip.MustParseAddrPort("10.53.0.1:53"))
			return err
		}, nil},
		{"nil Listener Close", func() error {
			if err := nilLn.Close(); err != nil {
				return err
			}
			return &nsnet.ValidationError{Pkg: "test", Field: "ok", Reason: "no panic"}
		}, nil},
		{"empty network name", func() error { return srv.AddNetwork("", []netip.Prefix{subnet}, false) }, nil},
		{"no subnets", func() error { return srv.AddNetwork("x", nil, false) }, nil},
		{"zero subnet", func() error { return srv.AddNetwork("x", []netip.Prefix{{}}, false) }, nil},
		{"bad interface", func() error { return srv.AddNetwork("x", []netip.Prefix{subnet}, false, "a/b") }, nil},
		{"star name", func() error { return srv.Register("n", dnsd.Endpoint{Name: "*"}) }, nil},
		{"comma name", func() error { return srv.Register("n", dnsd.Endpoint{Name: "a,b"}) }, nil},
		{"newline name", func() error { return srv.Register("n", dnsd.Endpoint{Name: "a\nb"}) }, nil},
		{"NUL alias", func() error { return srv.Register("n", dnsd.Endpoint{Name: "a", Aliases: []string{"b\x00"}}) }, nil},
		{"zero address", func() error { return srv.Register("n", dnsd.Endpoint{Name: "a", Addrs: []netip.Addr{{}}}) }, nil},
		{"no such network", func() error { return srv.Register("nope", dnsd.Endpoint{Name: "a"}) }, dnsd.ErrNotFound},
		{"domain with a space", func() error { _, err := dnsd.New(dnsd.Config{Domain: "a b.internal"}); return err }, nil},
		{"unspecified upstream", func() error {
			_, err := dnsd.New(dnsd.Config{NS: host, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}})
			return err
		}, nil},
		{"ListenHost nil host", func() error { _, err := srv.ListenHost(ctx, nil, netip.MustParseAddrPort("10.53.0.1:53")); return err }, nil},
		{"ListenHost zero host", func() error {
			_, err := srv.ListenHost(ctx, &netns.NS{}, netip.MustParseAddrPort("10.53.0.1:53"))
			return err
		}, nil},
		{"ListenHost zero addr", func() error { _, err := srv.ListenHost(ctx, host, netip.AddrPort{}); return err }, nil},
		{"ListenHost cancelled", func() error {
			_, err := srv.ListenHost(cancelled, host, netip.MustParseAddrPort("10.53.0.1:53"))
			return err
		}, context.Canceled},
		{"ListenContainer no addrs", func() error { _, err := srv.ListenContainer(ctx, host, nil); return err }, nil},
		{"ListenContainer cancelled", func() error {
			_, err := srv.ListenContainer(cancelled, host, client)
			return err
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := answer()
			err := nstest.Untouched(t, tc.call, host)
			var ve *nsnet.ValidationError
			switch {
			case tc.want == nil && !errors.As(err, &ve):
				t.Errorf("err = %v, want a *nsnet.ValidationError", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if after := answer(); after != before {
				t.Error("the server's answer for web changed")
			}
		})
	}
}
