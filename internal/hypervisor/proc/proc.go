// Package proc supervises hypervisor processes that outlive the daemon: pid files, identity checks, exit watching, signals and kill escalation.
package proc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/hypervisor"
)

// Process is one watched process: a child started by Start, or any process
// pinned by Open. Its handle is taken before any check of the process, so
// that the checks and every later signal are about that very process even
// if its pid is reused: a pidfd where the kernel has them, else the process
// start time from /proc, compared before each signal.
type Process struct {
	pid   int
	child *os.Process // set by Start: the exit status is known
	pidfd *os.File    // nil without pidfds, or for a child
	start string      // /proc start time, when neither of the above
	// adopted is set for a daemonized process reparented to this one.
	adopted bool

	done   chan struct{}
	stop   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	status *os.ProcessState // a child's, once it exited
	exit   *Exit            // how it ended, when known
}

// Exit is how a process ended.
type Exit struct {
	// Code is the exit status when it exited; Signal is the signal that
	// killed it, when one did.
	Code   int
	Signal syscall.Signal
}

func (e Exit) String() string {
	if e.Signal != 0 {
		return "killed by signal " + strconv.Itoa(int(e.Signal)) + " (" + unix.SignalName(e.Signal) + ")"
	}
	return "exit status " + strconv.Itoa(e.Code)
}

// Start starts cmd detached in a session of its own (it survives the
// daemon) and watches it. The exit status of such a child is known.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{pid: cmd.Process.Pid, child: cmd.Process, done: make(chan struct{}), stop: make(chan struct{})}
	children.Store(p.pid, true)
	go func() {
		cmd.Wait()
		children.Delete(p.pid)
		p.mu.Lock()
		p.status = cmd.ProcessState
		if cmd.ProcessState == nil {
			// Not waitable (reaped elsewhere): how it ended is unknown.
		} else if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			e := Exit{Code: ws.ExitStatus()}
			if ws.Signaled() {
				e = Exit{Code: -1, Signal: ws.Signal()}
			}
			p.exit = &e
		}
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// children are the pids Start runs, which os/exec reaps: Open must not.
var children sync.Map

// BecomeSubreaper makes this process the reaper of its orphaned
// descendants: a hypervisor that daemonizes (qemu -daemonize) then stays
// its child, so its exit status (a SIGKILL, a crash) is known. The next
// daemon adopts running hypervisors without that knowledge.
func BecomeSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// adoptedChild reports whether pid is a child of this process that os/exec
// does not wait for: a daemonized descendant reparented to the subreaper.
func adoptedChild(pid int) bool {
	if _, ok := children.Load(pid); ok {
		return false
	}
	return parentOf(pid) == os.Getpid()
}

// parentOf returns the parent pid of pid, or 0.
func parentOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// Open pins the running process pid and watches it. It returns an error
// wrapping hypervisor.ErrNotRunning when the process does not exist.
func Open(pid int) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("opening pid %d: %w", pid, hypervisor.ErrNotRunning)
	}
	p := &Process{pid: pid, done: make(chan struct{}), stop: make(chan struct{})}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	switch {
	case err == nil:
		p.pidfd = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
		// A daemonized hypervisor (qemu -daemonize) is reparented to this
		// process when it is a subreaper (see BecomeSubreaper): then it is
		// ours to reap, and its exit status is known.
		p.adopted = adoptedChild(pid)
		go p.waitPidfd()
		return p, nil
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("opening pid %d: %w", pid, hypervisor.ErrNotRunning)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EPERM):
		// Kernels before 5.10 (no PIDFD_NONBLOCK) or 5.3, or a sandbox.
		start, err := startTime(pid)
		if err != nil {
			return nil, fmt.Errorf("reading the start time of pid %d: %w", pid, hypervisor.ErrNotRunning)
		}
		p.start = start
		p.adopted = adoptedChild(pid)
		go p.pollProc()
		return p, nil
	default:
		return nil, fmt.Errorf("opening a pidfd of pid %d: %w", pid, err)
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait blocks until the process exits or ctx ends.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for pid %d to exit: %w", p.pid, ctx.Err())
	}
}

// Exit says how the process ended; ok is false while it runs, and for a
// process that was not this one's child (only a parent learns how its
// child ended).
func (p *Process) Exit() (e Exit, ok bool) {
	if !p.Exited() {
		return Exit{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit == nil {
		return Exit{}, false
	}
	return *p.exit, true
}

// Signal sends sig to the process; a process that is gone is not an error.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	var err error
	switch {
	case p.child != nil:
		err = p.child.Signal(sig)
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
	case p.pidfd != nil:
		rc, cerr := p.pidfd.SyscallConn()
		if cerr != nil {
			return nil // closed after the exit
		}
		if cerr := rc.Control(func(fd uintptr) { err = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); cerr != nil {
			return nil
		}
	default:
		if !p.alive() {
			return nil
		}
		err = unix.Kill(p.pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signalling pid %d: %w", p.pid, err)
	}
	return nil
}

// Kill ends the process: SIGTERM first when term is positive, and SIGKILL
// after term; it then waits up to grace for the exit.
func (p *Process) Kill(term, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	if term > 0 {
		p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return nil
		case <-time.After(term):
		}
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		return fmt.Errorf("killing pid %d: it survived SIGKILL for %v", p.pid, grace)
	}
}

// Close releases the handle without touching the process; Done is never
// closed afterwards unless the process already exited.
func (p *Process) Close() {
	p.once.Do(func() { close(p.stop) })
	if p.pidfd != nil {
		p.pidfd.Close()
	}
}

func (p *Process) waitPidfd() {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return
	}
	// A pidfd becomes readable when its process exits. The runtime's poller
	// waits for that without holding a thread.
	err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd), 0) })
	if err != nil {
		select {
		case <-p.stop:
			return // closed: nobody waits any more
		default:
		}
		// Not pollable through the runtime: block a thread instead.
		err = rc.Control(func(fd uintptr) {
			for !pidfdExited(int(fd), -1) {
			}
		})
	}
	if err != nil {
		return
	}
	if p.adopted {
		p.reap()
	}
	close(p.done)
	p.pidfd.Close()
}

// reap collects the exit status of an adopted child, through its pidfd
// when it has one.
func (p *Process) reap() {
	if p.pidfd == nil {
		var ws unix.WaitStatus
		if pid, err := unix.Wait4(p.pid, &ws, unix.WNOHANG, nil); err != nil || pid != p.pid {
			return
		}
		e := Exit{Code: ws.ExitStatus()}
		if ws.Signaled() {
			e = Exit{Code: -1, Signal: syscall.Signal(ws.Signal())}
		}
		p.mu.Lock()
		p.exit = &e
		p.mu.Unlock()
		return
	}
	var info unix.Siginfo
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return
	}
	var werr error
	rc.Control(func(fd uintptr) {
		werr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG, nil)
	})
	if werr != nil || info.Signo == 0 {
		return
	}
	// siginfo_t for SIGCHLD: si_code, then si_pid, si_uid and si_status at
	// offsets 16, 20 and 24.
	raw := (*[128]byte)(unsafe.Pointer(&info))
	status := int32(binary.NativeEndian.Uint32(raw[24:28]))
	e := Exit{Code: int(status)}
	switch info.Code {
	case cldKilled, cldDumped:
		e = Exit{Code: -1, Signal: syscall.Signal(status)}
	case cldExited:
	default:
		return
	}
	p.mu.Lock()
	p.exit = &e
	p.mu.Unlock()
}

// si_code values of SIGCHLD.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

func pidfdExited(fd, timeoutMS int) bool {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, timeoutMS)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

func (p *Process) pollProc() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if !p.alive() {
			if p.adopted {
				p.reap()
			}
			close(p.done)
			return
		}
		select {
		case <-t.C:
		case <-p.stop:
			return
		}
	}
}

func (p *Process) alive() bool {
	start, err := startTime(p.pid)
	return err == nil && start == p.start
}

// startTime returns field 22 of /proc/<pid>/stat, or an error when the
// process is gone or a zombie.
func startTime(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may contain spaces; fields after it don't.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", fmt.Errorf("pid %d has exited", pid)
	}
	return f[19], nil
}

// Cmdline returns the arguments of a running process.
func Cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("pid %d has no command line (exited, or a kernel thread)", pid)
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}

// ReadPIDFile reads a pid file. A missing, empty or corrupt file is an
// error wrapping hypervisor.ErrNotRunning: nothing to adopt.
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("reading %s: %w", path, hypervisor.ErrNotRunning)
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("parsing %s: %q is not a pid: %w", path, truncate(string(data), 32), hypervisor.ErrNotRunning)
	}
	return pid, nil
}

// WritePIDFile replaces path with pid, atomically, mode 0600.
func WritePIDFile(path string, pid int) error {
	return atomicfile.Write(path, []byte(strconv.Itoa(pid)+"\n"), 0o600)
}

// Adopt reads the pid file at path, pins that process and accepts it only
// when ours says its command line belongs to the caller's VM: otherwise
// the pid was reused by another program. It returns an error wrapping
// hypervisor.ErrNotRunning when there is nothing of ours to adopt.
func Adopt(path string, ours func(args []string) (bool, string)) (*Process, error) {
	pid, err := ReadPIDFile(path)
	if err != nil {
		return nil, err
	}
	p, err := Open(pid)
	if err != nil {
		return nil, err
	}
	args, err := Cmdline(pid)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("pid %d from %s is gone: %w", pid, path, hypervisor.ErrNotRunning)
	}
	if ok, why := ours(args); !ok {
		p.Close()
		return nil, fmt.Errorf("pid %d from %s is not ours (%s): %w", pid, path, why, hypervisor.ErrNotRunning)
	}
	return p, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
