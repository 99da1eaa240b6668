// Package runner runs host commands with a fixed locale, one narrow privileged path through sudo, and useful errors.
package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrSudoPassword is returned when a privileged command needs sudo and sudo
// would ask for a password. Nothing was run.
var ErrSudoPassword = errors.New("sudo would ask for a password")

// ErrSudoDenied is returned when sudo does not allow a privileged command.
// Nothing was run.
var ErrSudoDenied = errors.New("sudo does not allow it")

// SystemDirs are searched for host tools after PATH: Debian installs ip,
// nft, mkfs.ext4, debugfs, debootstrap and friends there, and an ordinary
// user's PATH does not include them.
var SystemDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// Runner runs commands. Tests substitute a fake.
type Runner interface {
	// Run runs name with args and returns its standard output.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// RunPrivileged runs the command as root: directly when already root,
	// through "sudo -n -- /abs/path args..." otherwise. It is the only way
	// banger gains privileges.
	RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the Runner that executes real processes.
type Exec struct {
	// Env is extra environment appended to the process environment.
	Env []string
	// Detached says the process has no terminal (bangerd), so sudo can never
	// ask for a password: errors then point at a sudoers rule instead of
	// 'sudo -v'. Commands run in a session of their own, without a
	// controlling terminal, so 'banger doctor' sees sudo as bangerd does.
	Detached bool
}

// Default is the process-wide Runner.
var Default Runner = Exec{}

// LookPath finds a host tool: name itself when it holds a slash, else the
// first executable in PATH, else in SystemDirs. The result is absolute, so
// that privileged commands run with a fixed argv a sudoers rule can name.
func LookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		if !isExecutable(name) {
			return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
		}
		return filepath.Abs(name)
	}
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
	}
	for _, dir := range SystemDirs {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Run implements Runner.
func (e Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("running %s: %w", name, err)
	}
	return e.run(ctx, name, path, args)
}

// RunPrivileged implements Runner.
func (e Exec) RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("running %s: %w", name, err)
	}
	if IsRoot() {
		return e.run(ctx, name, path, args)
	}
	sudo, err := LookPath("sudo")
	if err != nil {
		return nil, fmt.Errorf("running %s as root: sudo is not installed: run 'apt-get install sudo' as root, or run banger as root", name)
	}
	out, err := e.run(ctx, "sudo", sudo, append([]string{"-n", "--", path}, args...))
	if err != nil {
		if serr := e.sudoError(path, err); serr != nil {
			return out, serr
		}
	}
	return out, err
}

// sudoError turns sudo's own refusals into ErrSudoPassword or
// ErrSudoDenied with advice, or returns nil when the command itself failed.
func (e Exec) sudoError(path string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "a password is required"):
		return fmt.Errorf("running %s as root: %w: %s", path, ErrSudoPassword, e.passwordAdvice())
	case strings.Contains(msg, "is not allowed to execute"), strings.Contains(msg, "may not run sudo"), strings.Contains(msg, "is not in the sudoers file"):
		return fmt.Errorf("running %s as root: %w: add it to your sudoers rule ('banger sudoers' prints one)", path, ErrSudoDenied)
	}
	return nil
}

func (e Exec) passwordAdvice() string {
	if e.Detached {
		return "bangerd runs without a terminal, so sudo cannot ask it for one: let your user run banger's privileged commands without a password ('banger sudoers' prints the rule to install), or run bangerd as root"
	}
	return "run 'sudo -v' in this terminal first, then retry"
}

// CheckPrivileged makes sure that RunPrivileged can run each tool without
// sudo prompting, before an operation changes anything, so that a refusal
// changes nothing. Each probe is a harmless argv of one tool, such as
// {"ip", "-V"}: as root nothing runs; otherwise each probe runs once as
// 'sudo -n -- /abs/path args' ('sudo -l' cannot tell: it reports a command
// allowed even when running it needs a password). Successes are remembered
// for a minute.
func (e Exec) CheckPrivileged(ctx context.Context, probes ...[]string) error {
	if IsRoot() || len(probes) == 0 {
		return nil
	}
	sudo, err := LookPath("sudo")
	if err != nil {
		var names []string
		for _, p := range probes {
			names = append(names, p[0])
		}
		return fmt.Errorf("banger needs root for %s: sudo is not installed: run 'apt-get install sudo' as root, or run banger as root", strings.Join(names, ", "))
	}
	for _, probe := range probes {
		path, err := LookPath(probe[0])
		if err != nil {
			return fmt.Errorf("checking sudo for %s: %w", probe[0], err)
		}
		if sudoOK.fresh(path) {
			continue
		}
		if _, err := e.run(ctx, "sudo", sudo, append([]string{"-n", "--", path}, probe[1:]...)); err != nil {
			if serr := e.sudoError(path, err); serr != nil {
				return serr
			}
			return fmt.Errorf("checking that sudo runs %s: %w", path, err)
		}
		sudoOK.remember(path)
	}
	return nil
}

// CheckPrivileged runs r's CheckPrivileged when it has one (fakes need not).
func CheckPrivileged(ctx context.Context, r Runner, probes ...[]string) error {
	if c, ok := r.(interface {
		CheckPrivileged(context.Context, ...[]string) error
	}); ok {
		return c.CheckPrivileged(ctx, probes...)
	}
	return nil
}

// sudoCache remembers tools sudo recently allowed.
type sudoCache struct {
	mu sync.Mutex
	at map[string]time.Time
}

var sudoOK = &sudoCache{at: map[string]time.Time{}}

func (c *sudoCache) fresh(path string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.at[path]
	return ok && time.Since(t) < time.Minute
}

func (c *sudoCache) remember(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at[path] = time.Now()
}

// run executes path with args; name is what errors call it.
func (e Exec) run(ctx context.Context, name, path string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), e.Env...)
	if e.Detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
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
		argv := strings.Join(args, " ")
		if len(argv) > 300 {
			argv = argv[:300] + "..."
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, argv, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w", name, argv, err)
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
