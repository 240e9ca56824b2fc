//go:build !linux

// Package ctrlink is Linux-only; on other systems it is empty.
package ctrlink
