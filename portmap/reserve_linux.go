package portmap

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// A reservation is a socket on a host port, made with plain system calls
// in the host namespace: TCP listening, UDP bound, SCTP listening. No
// goroutine per socket reads it and Go's poller does not know it: one
// epoll instance per Mapper (the drainer) tells one goroutine which of
// them have something, and it closes the connections (they went around
// the DNAT) and drops the datagrams. That makes a reservation a quarter of
// what net.Listen and a goroutine cost: 1,000 ports in 5 to 7 ms, not 15
// to 45 (see BenchmarkAddAll1000First).
type drainer struct {
	mu   sync.Mutex
	ep   *os.File    // the epoll instance, in Go's poller; nil: not made yet
	fds  map[int]int // the sockets it watches, and their types
	done chan struct{}
}

// reservation is one socket of the drainer's.
type reservation struct {
	d  *drainer
	fd int
}

// Close stops watching the socket and closes it, under the drainer's
// lock, so that the drainer never reads a descriptor that was closed and
// given to something else.
func (r reservation) Close() error {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	delete(r.d.fds, r.fd)
	return unix.Close(r.fd)
}

// openReservation opens the reservation socket of k on a thread in the
// host namespace; nil for an SCTP port on a kernel without SCTP.
func (mp *Mapper) openReservation(k resKey) (io.Closer, error) {
	addr := k.addr
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
		if k.v6 {
			addr = netip.IPv6Unspecified()
		}
	}
	var dom int
	var sa unix.Sockaddr
	if addr.Is6() {
		dom, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: k.port, Addr: addr.As16()}
	} else {
		dom, sa = unix.AF_INET, &unix.SockaddrInet4{Port: k.port, Addr: addr.As4()}
	}
	typ := unix.SOCK_STREAM
	if k.proto == unix.IPPROTO_UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(dom, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(k.proto))
	if k.proto == unix.IPPROTO_SCTP && (errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)) {
		return nil, nil // no SCTP in this kernel: nothing can take the port
	}
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	fail := func(call string, err error) (io.Closer, error) {
		unix.Close(fd)
		return nil, os.NewSyscallError(call, err)
	}
	if addr.Is6() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if typ == unix.SOCK_STREAM {
		// As net.Listen: a port whose last connections wait in
		// TIME_WAIT can be held again.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 16); err != nil {
			return fail("listen", err)
		}
	}
	if err := mp.drain.watch(fd, typ); err != nil {
		return fail("epoll_ctl", err)
	}
	return reservation{&mp.drain, fd}, nil
}

// watch adds fd to the drainer, starting it on first use.
func (d *drainer) watch(fd, typ int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ep == nil {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return err
		}
		if err := unix.SetNonblock(ep, true); err != nil {
			unix.Close(ep)
			return err
		}
		d.ep, d.fds, d.done = os.NewFile(uintptr(ep), "portmap-reservations"), map[int]int{}, make(chan struct{})
		go d.run(d.ep, d.done)
	}
	if err := unix.EpollCtl(int(d.ep.Fd()), unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		return err
	}
	d.fds[fd] = typ
	return nil
}

// run waits, in Go's poller, for the epoll instance to have events, and
// drains the sockets they name, until the instance is closed. It reads
// until the instance has nothing left (Go's poller tells of new events
// only), a bounded number from a socket at a time, and lets go of the
// lock between rounds, so that a flood on one port holds up neither the
// others nor the Mapper.
func (d *drainer) run(ep *os.File, done chan struct{}) {
	defer close(done)
	rc, err := ep.SyscallConn()
	if err != nil {
		return
	}
	events := make([]unix.EpollEvent, 64)
	buf := make([]byte, 1)
	rc.Read(func(epfd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(epfd), events, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || n <= 0 {
				return false // nothing left: wait for the poller
			}
			d.mu.Lock()
			if d.ep != ep {
				d.mu.Unlock()
				return true // closed: stop even if events keep coming
			}
			for _, ev := range events[:n] {
				fd := int(ev.Fd)
				typ, ok := d.fds[fd]
				if !ok {
					continue // closed meanwhile
				}
				for range 64 {
					if typ == unix.SOCK_DGRAM {
						if _, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT); err != nil {
							break
						}
					} else if nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC); err == nil {
						unix.Close(nfd) // a connection that went around the DNAT
					} else {
						break
					}
				}
			}
			d.mu.Unlock()
		}
	})
}

// close stops the drainer: its goroutine ends before close returns.
func (d *drainer) close() error {
	d.mu.Lock()
	ep, done := d.ep, d.done
	d.ep = nil
	d.mu.Unlock()
	if ep == nil {
		return nil
	}
	err := ep.Close()
	<-done
	return err
}
