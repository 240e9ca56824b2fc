//go:build !linux

// Package check is Linux-only, like the examples it runs.
package check
