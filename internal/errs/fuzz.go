package errs

import (
	"errors"
	"net"
	"net/netip"

	"github.com/nsnet/nsnet"
)

// CheckValid reports what is wrong with err as the result of a Validate:
// "" if it is nil or a *nsnet.ValidationError (or one of also), the reason
// otherwise. The fuzz targets of every package use it.
func CheckValid(err error, also ...error) string {
	if err == nil {
		return ""
	}
	var ve *nsnet.ValidationError
	if errors.As(err, &ve) {
		if ve.Pkg == "" || ve.Field == "" || ve.Reason == "" {
			return "a ValidationError without its package, field or reason: " + err.Error()
		}
		return ""
	}
	for _, a := range also {
		if errors.Is(err, a) {
			return ""
		}
	}
	return "not a *nsnet.ValidationError: " + err.Error()
}

// FuzzPrefix and FuzzAddr turn fuzzer strings into values, the zero value
// when they do not parse; FuzzMAC takes the bytes as they are.
func FuzzPrefix(s string) netip.Prefix { p, _ := netip.ParsePrefix(s); return p }
func FuzzAddr(s string) netip.Addr     { a, _ := netip.ParseAddr(s); return a }
func FuzzMAC(b []byte) net.HardwareAddr {
	if b == nil {
		return nil
	}
	return net.HardwareAddr(b)
}
