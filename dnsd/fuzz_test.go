package dnsd_test

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/nsnet/nsnet/dnsd"
	"github.com/nsnet/nsnet/internal/errs"
)

// FuzzParseResolvConf: any file parses without a panic, and what it
// parses to reads back the same from its own Bytes.
func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 10.0.0.1\nsearch example.com\noptions ndots:1\n"))
	f.Add([]byte("# comment\nnameserver ::1\nnameserver fe80::1%eth0\ndomain x\n"))
	f.Add([]byte("nameserver\nsearch\x00\n\n\tnameserver 1.2.3.4 # x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rc := dnsd.ParseResolvConf(b)
		again := dnsd.ParseResolvConf(rc.Bytes())
		if !reflect.DeepEqual(rc, again) {
			t.Fatalf("%q parses to %+v, whose Bytes parse to %+v", b, rc, again)
		}
	})
}

// FuzzNew: whatever the Config, New returns a server or a
// *nsnet.ValidationError, and never panics.
func FuzzNew(f *testing.F) {
	f.Add("nsnet.internal", int64(600), 64, 8, "10.0.0.1:53")
	f.Add("", int64(-1), -1, -1, "0.0.0.0:53")
	f.Add("a b.", int64(0), 0, 0, "")
	f.Fuzz(func(t *testing.T, domain string, ttl int64, maxFwd, maxClient int, upstream string) {
		cfg := dnsd.Config{Domain: domain, TTL: time.Duration(ttl) * time.Second, MaxForwards: maxFwd,
			MaxClientForwards: maxClient, Upstreams: []netip.AddrPort{}}
		if ap, err := netip.ParseAddrPort(upstream); err == nil {
			cfg.Upstreams = []netip.AddrPort{ap}
		}
		s, err := dnsd.New(cfg)
		if why := errs.CheckValid(err); why != "" {
			t.Fatal(why)
		}
		if s != nil {
			s.Close()
		}
	})
}
