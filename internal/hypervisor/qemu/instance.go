package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
)

// instance is one QEMU process. QEMU is not the daemon's direct child (it
// daemonizes); bangerd is its subreaper while it runs, so its exit status
// is known unless a later bangerd adopted it.
type instance struct {
	b     *Backend
	spec  hypervisor.Spec
	pid   int
	vsock bool
	p     *proc.Process

	qmpMu     sync.Mutex // one monitor session at a time
	requested atomic.Bool
}

var _ hypervisor.Instance = (*instance)(nil)

// PID implements hypervisor.Instance.
func (i *instance) PID() int { return i.pid }

// Exited implements hypervisor.Instance.
func (i *instance) Exited() bool { return i.p.Exited() }

// Exit implements hypervisor.Instance.
func (i *instance) Exit() hypervisor.Exit {
	e, ok := i.p.Exit()
	return hypervisor.Exit{Known: ok, Code: e.Code, Signal: e.Signal, Requested: i.requested.Load()}
}

// Wait implements hypervisor.Instance.
func (i *instance) Wait(ctx context.Context) error {
	if err := i.p.Wait(ctx); err != nil {
		return fmt.Errorf("waiting for qemu pid %d of vm %s to exit: %w", i.pid, i.spec.ID, ctx.Err())
	}
	return nil
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
	i.requested.Store(true)
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
	i.requested.Store(true)
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
	if err := i.p.Kill(0, 10*time.Second); err != nil {
		return fmt.Errorf("killing qemu pid %d of vm %s: %w", i.pid, i.spec.ID, err)
	}
	return nil
}

// MarkRequested records that banger itself ends the process (the guest
// agent's shutdown), so that its exit is not taken for a crash.
func (i *instance) MarkRequested() { i.requested.Store(true) }

// DialAgent implements hypervisor.Instance.
func (i *instance) DialAgent(ctx context.Context) (net.Conn, error) {
	if i.Exited() {
		return nil, fmt.Errorf("dialing agent of vm %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	if i.vsock {
		c, err := dialVsock(ctx, i.spec.AgentCID, agent.Port)
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
