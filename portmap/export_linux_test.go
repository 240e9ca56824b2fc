package portmap

import "github.com/nsnet/nsnet/internal/nft"

// SetStep sets mp's step hook: Add, AddAll, Remove and RemoveAll call it
// with the name of each step they have done ("reserve", "forwarding",
// "table", "nft", "localnet", "conntrack"; "localnet-off", "nft",
// "release", "conntrack"), to stop or kill the process there. Set it
// before mp is used.
func (mp *Mapper) SetStep(f func(step string)) { mp.stepHook = nft.StepFunc(f) }
