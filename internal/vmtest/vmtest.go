// Package vmtest is the scaffolding of tests that need root, qemu or real host networking: one gate that skips them (or fails them under BANGER_VM_TESTS=1), and throwaway network namespaces.
package vmtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner"
)

// Env is the variable that turns the VM tests on; 'make test' sets it.
const Env = "BANGER_VM_TESTS"

// Enabled reports whether VM tests must run (BANGER_VM_TESTS=1).
func Enabled() bool { return os.Getenv(Env) == "1" }

// Need is one prerequisite of a test: nil when met, else what is missing
// and how to get it.
type Need func() error

// Require checks the needs of a test that does what: when one is missing
// the test skips, saying what and how to enable it, or, when VM tests are
// enabled, fails. Without BANGER_VM_TESTS=1 the test always skips (VM tests
// are opt-in), unless optIn is false: then only missing needs skip it.
func Require(t testing.TB, what string, needs ...Need) {
	t.Helper()
	require(t, what, true, needs)
}

// RequireHost is Require for tests that run wherever their needs are met
// (root, a tool) without BANGER_VM_TESTS=1.
func RequireHost(t testing.TB, what string, needs ...Need) {
	t.Helper()
	require(t, what, false, needs)
}

func require(t testing.TB, what string, optIn bool, needs []Need) {
	t.Helper()
	if optIn && !Enabled() {
		t.Skipf("%s: set %s=1 to run it (make test does)", what, Env)
	}
	var missing []string
	for _, n := range needs {
		if err := n(); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("%s needs %s", what, strings.Join(missing, "; "))
	if Enabled() {
		t.Fatalf("%s (%s=1 makes this a failure)", msg, Env)
	}
	t.Skip(msg)
}

// Root needs the test to run as root.
func Root() Need {
	return func() error {
		if !runner.IsRoot() {
			return errors.New("root (run the tests as root: sudo make test)")
		}
		return nil
	}
}

// Tool needs a host tool, found as banger finds them (runner.LookPath).
func Tool(name, pkg string) Need {
	return func() error {
		if _, err := runner.LookPath(name); err != nil {
			return fmt.Errorf("%s (apt-get install %s)", name, pkg)
		}
		return nil
	}
}

// Var needs an environment variable; hint says who sets it.
func Var(name, hint string) Need {
	return func() error {
		if os.Getenv(name) == "" {
			return fmt.Errorf("%s (%s)", name, hint)
		}
		return nil
	}
}

// File needs a file; hint says how to make it.
func File(path, hint string) Need {
	return func() error {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s (%s)", path, hint)
		}
		return nil
	}
}

// Command is exec.Command with name found as banger finds host tools
// (runner.LookPath: PATH, then the sbin directories an ordinary user's
// PATH lacks). A name that is nowhere is left for the run to report.
func Command(name string, args ...string) *exec.Cmd {
	if p, err := runner.LookPath(name); err == nil {
		name = p
	}
	return exec.Command(name, args...)
}
