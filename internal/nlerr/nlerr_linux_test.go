package nlerr

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetry(t *testing.T) {
	calls := 0
	got, err := Retry(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, netlink.ErrDumpInterrupted // a half list
		}
		return []int{1, 2, 3}, nil
	})
	if err != nil || len(got) != 3 || calls != 3 {
		t.Fatalf("Retry = %v, %v after %d calls; want the whole list after 3", got, err, calls)
	}

	calls = 0
	got, err = Retry(func() ([]int, error) {
		calls++
		return []int{1}, fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted)
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || got != nil || calls != MaxDumpRetries {
		t.Fatalf("always interrupted: %v, %v after %d calls; want an error, no list, %d calls", got, err, calls, MaxDumpRetries)
	}

	other := errors.New("other")
	calls = 0
	if _, err := Retry(func() (int, error) { calls++; return 0, other }); err != other || calls != 1 {
		t.Fatalf("other error: %v after %d calls", err, calls)
	}
}
