package portmap_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nsnet/nsnet/netns"
	"github.com/nsnet/nsnet/portmap"
)

// childEnv makes the test binary a child process of a test (TestMain): a
// Mapper of its own on the host NSNET_HOST, driven through stdin.
const childEnv = "NSNET_PORTMAP_CHILD"

// portmapChild reads commands, one a line, and answers each on stdout:
//
//	step NAME          stop at step NAME of the next calls: say "at NAME" and wait (to be killed)
//	add JSON           AddAll of the []Mapping JSON: "ok" or "err ..."
//	remove JSON        RemoveAll, likewise
//
// It says "ready" first.
func portmapChild() {
	host, err := netns.Open(os.Getenv("NSNET_HOST"))
	if err != nil {
		fmt.Println("err", err)
		return
	}
	mp, err := portmap.New(host, portmap.Config{})
	if err != nil {
		fmt.Println("err", err)
		return
	}
	out := bufio.NewWriter(os.Stdout)
	say := func(a ...any) {
		fmt.Fprintln(out, a...)
		out.Flush()
	}
	var at string
	mp.SetStep(func(s string) {
		if s == at {
			say("at", s)
			select {}
		}
	})
	say("ready")
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 1<<20)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		var ms []portmap.Mapping
		if cmd == "add" || cmd == "remove" {
			if err := json.Unmarshal([]byte(arg), &ms); err != nil {
				say("err", err)
				continue
			}
		}
		switch cmd {
		case "step":
			at = arg
			say("ok")
		case "add":
			_, err := mp.AddAll(context.Background(), ms)
			say(result(err))
		case "remove":
			say(result(mp.RemoveAll(context.Background(), ms)))
		default:
			say("err unknown command", cmd)
		}
	}
}

func result(err error) string {
	if err != nil {
		return "err " + err.Error()
	}
	return "ok"
}

// child is a running child process.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startChild(t *testing.T, host *netns.NS) *child {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", fmt.Sprintf("NSNET_HOST=/proc/%d/fd/%d", os.Getpid(), host.Fd()))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(c.kill)
	if line := c.line(); line != "ready" {
		t.Fatalf("the child said %q, want ready", line)
	}
	return c
}

// send writes a command without waiting for its answer.
func (c *child) send(t *testing.T, cmd string, ms []portmap.Mapping) {
	t.Helper()
	if ms != nil {
		b, err := json.Marshal(ms)
		if err != nil {
			t.Fatal(err)
		}
		cmd += " " + string(b)
	}
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
}

// do sends a command and returns its answer.
func (c *child) do(t *testing.T, cmd string, ms []portmap.Mapping) string {
	t.Helper()
	c.send(t, cmd, ms)
	return c.line()
}

func (c *child) line() string {
	l, _ := c.out.ReadString('\n')
	return strings.TrimSpace(l)
}

// kill SIGKILLs the child, reaps it and returns what it said that was
// not read yet.
func (c *child) kill() {
	c.rest()
}

func (c *child) rest() []string {
	if c.cmd.ProcessState != nil {
		return nil
	}
	c.cmd.Process.Kill()
	c.in.Close()
	var lines []string
	for {
		l, err := c.out.ReadString('\n')
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
		if err != nil {
			break
		}
	}
	c.cmd.Wait()
	return lines
}
