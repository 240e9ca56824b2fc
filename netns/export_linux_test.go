package netns

// FailSwitchBack makes every later switch back of a thread fail with err,
// as if setns had refused, leaving the thread in the namespace it was in.
func FailSwitchBack(err error) { switchBack = func(int) error { return err } }
