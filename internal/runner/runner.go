// Package runner runs host commands with a fixed locale, privilege escalation and useful errors.
package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// ErrSudoNotWarm is returned when a privileged command needs sudo and sudo would prompt.
var ErrSudoNotWarm = errors.New("sudo needs a password: run 'sudo -v' in this terminal first, or run banger as root")

// Runner runs commands. Tests substitute a fake.
type Runner interface {
	// Run runs name with args and returns its standard output.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// RunPrivileged runs the command as root: directly when already root,
	// through "sudo -n" otherwise.
	RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the Runner that executes real processes.
type Exec struct {
	// Env is extra environment appended to the process environment.
	Env []string
}

// Default is the process-wide Runner.
var Default Runner = Exec{}

// Run implements Runner.
func (e Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return e.run(ctx, name, args)
}

// RunPrivileged implements Runner.
func (e Exec) RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error) {
	if IsRoot() {
		return e.run(ctx, name, args)
	}
	out, err := e.run(ctx, "sudo", append([]string{"-n", "--", name}, args...))
	if err != nil && strings.Contains(err.Error(), "a password is required") {
		return out, fmt.Errorf("running %s: %w", name, ErrSudoNotWarm)
	}
	return out, err
}

func (e Exec) run(ctx context.Context, name string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), e.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.Bytes(), nil
}

var (
	rootOnce sync.Once
	isRoot   bool
)

// IsRoot reports whether the process runs with effective uid 0.
func IsRoot() bool {
	rootOnce.Do(func() { isRoot = os.Geteuid() == 0 })
	return isRoot
}
