//go:build unix

package stack

import "syscall"

const nofollow = syscall.O_NOFOLLOW
