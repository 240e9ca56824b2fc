//go:build !unix

package stack

const nofollow = 0
