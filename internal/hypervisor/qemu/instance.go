package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/hypervisor"
)

// instance is one QEMU process. QEMU is not the daemon's child (it
// daemonizes), so its exit is observed through a pidfd.
type instance struct {
	b     *Backend
	spec  hypervisor.Spec
	pid   int
	vsock bool
	w     *watcher

	qmpMu sync.Mutex // one monitor session at a time
}

var _ hypervisor.Instance = (*instance)(nil)

// PID implements hypervisor.Instance.
func (i *instance) PID() int { return i.pid }

// Exited implements hypervisor.Instance.
func (i *instance) Exited() bool {
	select {
	case <-i.w.done:
		return true
	default:
		return false
	}
}

// Wait implements hypervisor.Instance.
func (i *instance) Wait(ctx context.Context) error {
	select {
	case <-i.w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for qemu pid %d of vm %s to exit: %w", i.pid, i.spec.ID, ctx.Err())
	}
}

// qmp runs fn in a fresh monitor session. Sessions are short so that a new
// daemon, or a person with socat, can always get in.
func (i *instance) qmp(ctx context.Context, fn func(*qmpClient) error) error {
	i.qmpMu.Lock()
	defer i.qmpMu.Unlock()
	c, err := dialQMP(ctx, filepath.Join(i.spec.Dir, QMPSocket))
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func (i *instance) status(ctx context.Context) (qmpStatus, error) {
	var st qmpStatus
	err := i.qmp(ctx, func(c *qmpClient) error {
		var err error
		st, err = c.QueryStatus(ctx)
		return err
	})
	return st, err
}

// Shutdown implements hypervisor.Instance: it presses the ACPI power button.
func (i *instance) Shutdown(ctx context.Context) error {
	if i.Exited() {
		return nil
	}
	err := i.qmp(ctx, func(c *qmpClient) error { return c.SystemPowerdown(ctx) })
	if err != nil {
		if i.Exited() {
			return nil
		}
		return fmt.Errorf("powering down vm %s: %w", i.spec.ID, err)
	}
	if err := i.Wait(ctx); err != nil {
		return fmt.Errorf("powering down vm %s: %w (the guest did not act on the ACPI power button; kill it instead)", i.spec.ID, err)
	}
	return nil
}

// Kill implements hypervisor.Instance: QMP quit, then SIGKILL.
func (i *instance) Kill() error {
	if i.Exited() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := i.qmp(ctx, func(c *qmpClient) error { return c.Quit(ctx) })
	if err == nil {
		err = i.Wait(ctx)
	}
	cancel()
	if err == nil {
		return nil
	}
	i.b.log().Debug("qemu did not quit through qmp, killing it", "vm", i.spec.ID, "pid", i.pid, "err", err)
	if err := i.signalKill(); err != nil {
		return fmt.Errorf("killing qemu pid %d of vm %s: %w", i.pid, i.spec.ID, err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := i.Wait(ctx); err != nil {
		return fmt.Errorf("killing qemu pid %d of vm %s: %w", i.pid, i.spec.ID, err)
	}
	return nil
}

func (i *instance) signalKill() error { return i.w.signal(unix.SIGKILL) }

// DialAgent implements hypervisor.Instance.
func (i *instance) DialAgent(ctx context.Context) (net.Conn, error) {
	if i.Exited() {
		return nil, fmt.Errorf("dialing agent of vm %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	if i.vsock {
		c, err := dialVsock(ctx, i.spec.AgentCID, hypervisor.AgentPort)
		if err != nil {
			return nil, fmt.Errorf("dialing agent of vm %s: %w", i.spec.ID, err)
		}
		return c, nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(i.spec.Dir, AgentSocket))
	if err != nil {
		return nil, fmt.Errorf("dialing agent of vm %s: %w", i.spec.ID, err)
	}
	return c, nil
}

// watcher observes one process that is not our child.
type watcher struct {
	pid   int
	pidfd *os.File // nil when pidfds are unsupported
	start string   // process start time, guards /proc polling against pid reuse
	done  chan struct{}
	stop  chan struct{}
	once  sync.Once
}

// watch opens a handle on pid. It returns hypervisor.ErrNotRunning when the
// process does not exist.
func watch(pid int) (*watcher, error) {
	w := &watcher{pid: pid, done: make(chan struct{}), stop: make(chan struct{})}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	switch {
	case err == nil:
		w.pidfd = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
		go w.waitPidfd()
		return w, nil
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("opening pid %d: %w", pid, hypervisor.ErrNotRunning)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL):
		// Kernels before 5.10 (no PIDFD_NONBLOCK) or before 5.3.
		start, err := startTime(pid)
		if err != nil {
			return nil, fmt.Errorf("reading start time of pid %d: %w", pid, hypervisor.ErrNotRunning)
		}
		w.start = start
		go w.pollProc()
		return w, nil
	default:
		return nil, fmt.Errorf("opening pidfd of pid %d: %w", pid, err)
	}
}

// close releases a watcher that is no longer wanted.
func (w *watcher) close() {
	w.once.Do(func() { close(w.stop) })
	if w.pidfd != nil {
		w.pidfd.Close()
	}
}

func (w *watcher) waitPidfd() {
	rc, err := w.pidfd.SyscallConn()
	if err != nil {
		return
	}
	// A pidfd becomes readable when the process exits. The runtime's
	// poller waits for that without holding a thread.
	err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd), 0) })
	if err != nil {
		select {
		case <-w.stop:
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
	close(w.done)
	w.pidfd.Close()
}

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

func (w *watcher) pollProc() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if !w.procAlive() {
			close(w.done)
			return
		}
		select {
		case <-t.C:
		case <-w.stop:
			return
		}
	}
}

func (w *watcher) procAlive() bool {
	start, err := startTime(w.pid)
	return err == nil && start == w.start
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

// signal sends sig to the process; a process that is gone is not an error.
func (w *watcher) signal(sig unix.Signal) error {
	var err error
	if w.pidfd != nil {
		rc, cerr := w.pidfd.SyscallConn()
		if cerr != nil {
			return nil // closed after exit
		}
		if cerr := rc.Control(func(fd uintptr) { err = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); cerr != nil {
			return nil
		}
	} else {
		if !w.procAlive() {
			return nil
		}
		err = unix.Kill(w.pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// vsockAddr is an AF_VSOCK address.
type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.cid, a.port) }

// vsockConn is a connected AF_VSOCK stream. The standard library's
// net.FileConn does not know the address family, so the file, which the
// runtime poller drives and which supports deadlines, is wrapped directly.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// dialVsock connects to port on the guest with context id cid.
func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	remote := vsockAddr{cid, port}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating vsock socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "vsock:"+remote.String())
	fail := func(err error) (net.Conn, error) {
		f.Close()
		return nil, fmt.Errorf("connecting to vsock %s: %w", remote, err)
	}
	err = unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail(err)
	}
	if err != nil {
		if d, ok := ctx.Deadline(); ok {
			f.SetWriteDeadline(d)
		}
		stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Now()) })
		rc, rerr := f.SyscallConn()
		if rerr != nil {
			stop()
			return fail(rerr)
		}
		var soErr error
		werr := rc.Write(func(fd uintptr) bool {
			n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				soErr = err
				return true
			}
			if n != 0 {
				soErr = unix.Errno(n)
				return true
			}
			_, err = unix.Getpeername(int(fd))
			return err == nil // not yet connected: wait for writability
		})
		stop()
		f.SetWriteDeadline(time.Time{})
		if werr != nil {
			if ctx.Err() != nil {
				werr = ctx.Err()
			}
			return fail(werr)
		}
		if soErr != nil {
			return fail(soErr)
		}
	}
	c := &vsockConn{File: f, remote: remote}
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			c.local = vsockAddr{vm.CID, vm.Port}
		}
	}
	return c, nil
}
