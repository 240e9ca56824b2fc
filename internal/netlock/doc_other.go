//go:build !linux

// Package netlock is Linux-only; on other systems it is empty.
package netlock
