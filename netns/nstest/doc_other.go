//go:build !linux

// Package nstest is Linux-only: network namespaces are.
package nstest
