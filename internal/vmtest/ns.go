package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/runner"
)

// NS is one named network namespace (under /run/netns).
type NS struct {
	Name string
}

// Create makes a new namespace with loopback up. The caller must Close it.
func Create(prefix string) (*NS, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("creating network namespace: needs root")
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	ns := &NS{Name: prefix + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("creating network namespace %s: %w: %s", ns.Name, err, out)
	}
	if out, err := exec.Command("ip", "-n", ns.Name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		ns.Close()
		return nil, fmt.Errorf("bringing up lo in %s: %w: %s", ns.Name, err, out)
	}
	return ns, nil
}

// NewNS creates a namespace for a test and removes it (killing every process
// left inside) when the test ends. It skips the test when not root.
func NewNS(tb testing.TB) *NS {
	tb.Helper()
	RequireHost(tb, "a network namespace", Root())
	ns, err := Create("bgt-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ns.Close(); err != nil {
			tb.Errorf("removing namespace: %v", err)
		}
	})
	return ns
}

// Close kills every process in the namespace, then deletes it.
func (ns *NS) Close() error {
	for i := 0; i < 50; i++ {
		pids := ns.PIDs()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Links (bridges, taps) die with the namespace.
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("deleting network namespace %s: %w: %s", ns.Name, err, out)
	}
	return nil
}

// PIDs lists the processes whose network namespace is ns.
func (ns *NS) PIDs() []int {
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Path is the namespace's bind-mount path.
func (ns *NS) Path() string { return filepath.Join("/run/netns", ns.Name) }

// Command returns a command that runs inside the namespace.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets that fn
// creates belong to the namespace and stay usable from any goroutine.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it is tainted and dies with the goroutine.
		runtime.LockOSThread()
		f, err := os.Open(ns.Path())
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", ns.Name, err)
			return
		}
		defer f.Close()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unsharing fs: %w", err)
			return
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects from inside the namespace.
func (ns *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Runner returns a runner.Runner whose commands run inside the namespace
// (privileged ones too: tests that use it run as root).
func (ns *NS) Runner() runner.Runner { return nsRunner{ns.Name} }

type nsRunner struct{ ns string }

func (r nsRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runner.Default.Run(ctx, "ip", append([]string{"netns", "exec", r.ns, name}, args...)...)
}

func (r nsRunner) RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error) {
	return r.Run(ctx, name, args...)
}
