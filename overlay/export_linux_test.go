package overlay

import "golang.org/x/sys/unix"

// Crash stops the host's control plane and heartbeat without a goodbye, as
// a host that dies would; Close still removes its devices afterwards. The
// host's packet socket is closed as a dying process's would be.
func (h *Host) Crash() {
	h.cancel()
	<-h.done
	h.mu.Lock()
	if h.arpFD >= 0 {
		unix.Close(h.arpFD)
		h.arpFD = -1
	}
	h.mu.Unlock()
}

// SetStepHook makes the calls on network call f at each of their steps
// (see step); nil removes it.
func SetStepHook(network string, f func(step string) error) {
	if f == nil {
		stepHooks.Delete(network)
		return
	}
	stepHooks.Store(network, f)
}
