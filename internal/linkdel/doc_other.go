//go:build !linux

// Package linkdel is Linux-only; on other systems it is empty.
package linkdel
