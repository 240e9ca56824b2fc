//go:build linux

package main

import (
	"testing"

	"github.com/nsnet/nsnet/examples/check"
	"github.com/nsnet/nsnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestRun(t *testing.T) { check.Test(t, run) }
