package dnsd

import (
	"encoding/binary"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setPktinfo asks the kernel to tell, with each datagram, the interface it
// arrived on.
func setPktinfo(c *net.UDPConn, v4 bool) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v4 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// pktinfoIfindex returns the interface index of the IP_PKTINFO or
// IPV6_PKTINFO control message in oob, 0 when there is none.
func pktinfoIfindex(oob []byte) int {
	const hdr = unix.SizeofCmsghdr
	for len(oob) >= hdr {
		l := int(binary.NativeEndian.Uint64(oob))
		level := int32(binary.NativeEndian.Uint32(oob[8:]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:]))
		if l < hdr || l > len(oob) {
			return 0
		}
		data := oob[hdr:l]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			return int(int32(binary.NativeEndian.Uint32(data)))
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			return int(binary.NativeEndian.Uint32(data[16:]))
		}
		next := unix.CmsgSpace(l - hdr)
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}

// connIfindex returns the interface an accepted TCP connection's SYN
// arrived on, 0 when unknown: the kernel keeps it for the socket and
// reports it as IP_PKTINFO through IP_PKTOPTIONS (IPV6_2292PKTOPTIONS).
func connIfindex(c net.Conn, v4 bool) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var buf [256]byte
	n := 0
	raw.Control(func(fd uintptr) {
		level, on, opt := unix.IPPROTO_IP, unix.IP_PKTINFO, unix.IP_PKTOPTIONS
		if !v4 {
			level, on, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, unix.IPV6_2292PKTOPTIONS
		}
		if unix.SetsockoptInt(int(fd), level, on, 1) != nil {
			return
		}
		l := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno == 0 {
			n = int(l)
		}
	})
	return pktinfoIfindex(buf[:n])
}
