//go:build linux

package nstest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsnet/nsnet/internal/keylock"
)

// rootlessEnv marks the child that Rootless starts, so that it runs the
// tests it was given instead of starting another child.
const rootlessEnv = "NSNET_ROOTLESS_CHILD"

// RootlessUID is the unprivileged user Rootless runs the tests as.
const RootlessUID = 65534 // nobody

// InRootless reports whether this process is the child of Rootless.
func InRootless() bool { return os.Getenv(rootlessEnv) != "" }

// Rootless runs the tests of this package that match run again, as an
// unprivileged user (uid RootlessUID) that is root only in a user namespace
// of its own, with a network namespace of its own as the machine: the way
// `unshare --user --map-root-user --net` runs a rootless container stack.
// It fails t with the child's output if any of them fails, and skips
// inside that child (so that it does not start another).
//
// Named namespaces need a mount namespace and a directory the user may
// write, and conntrack cleanup needs CAP_NET_ADMIN in the machine's first
// user namespace: leave such tests out of run.
func Rootless(t *testing.T, run string) {
	t.Helper()
	if InRootless() {
		t.Skip("nstest: already running rootless")
	}
	Require(t)
	// The test binary may sit in a directory only root can read: copy it
	// where the user can run it.
	dir, err := os.MkdirTemp("", "nstest-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "test")
	if err := copyFile(bin, "/proc/self/exe"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, "-test.run", run, "-test.count", "1", "-test.v")
	cmd.Dir = dir
	// The child makes its own lock directory under TMPDIR: this run's is
	// root's.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, keylock.DirEnv+"=") })
	tmp := filepath.Join(dir, "tmp") // the user's own, for its temporary files
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, RootlessUID, RootlessUID); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(env, rootlessEnv+"=1", "HOME="+tmp, "TMPDIR="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: RootlessUID, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: RootlessUID, Size: 1}},
		// setgroups stays denied, as it is for an unprivileged user.
		GidMappingsEnableSetgroups: false,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
		Pdeathsig:                  syscall.SIGKILL,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Seen from the machine, the child is the unprivileged user.
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	err = cmd.Wait()
	if uid := fmt.Sprintf("\nUid:\t%d\t", RootlessUID); len(status) > 0 && !bytes.Contains(status, []byte(uid)) {
		t.Fatalf("the rootless child does not run as uid %d:\n%s", RootlessUID, status)
	}
	if err != nil || !bytes.Contains(out.Bytes(), []byte("--- PASS")) {
		t.Fatalf("rootless run of %q as uid %d: %v\n%s", run, RootlessUID, err, out.String())
	}
	t.Logf("rootless run of %q as uid %d in a user namespace: passed", run, RootlessUID)
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
