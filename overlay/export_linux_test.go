package overlay

// Crash stops the host's control plane and heartbeat without a goodbye, as
// a host that dies would; Close still removes its devices afterwards.
func (h *Host) Crash() {
	h.cancel()
	<-h.done
}
