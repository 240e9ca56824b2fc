//go:build !linux

// Package etcdtest is Linux-only, like nstest.
package etcdtest
