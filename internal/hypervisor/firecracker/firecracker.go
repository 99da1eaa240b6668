// Package firecracker runs microVMs with the Firecracker VMM through its HTTP API on a unix socket.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/logfile"
)

// Files that Start makes in spec.Dir.
const (
	APISocketName   = "firecracker.sock"
	VsockSocketName = "vsock.sock"
	PIDFileName     = "firecracker.pid"
	LogFileName     = "firecracker.log"
	// ConsoleLogName is used when spec.ConsoleLog is empty.
	ConsoleLogName = "console.log"
)

// Timeouts of Kill.
const (
	termGrace = 3 * time.Second
	killGrace = 10 * time.Second
)

// Backend is the Firecracker hypervisor backend.
type Backend struct {
	// Binary is the path to firecracker; empty means look it up in PATH.
	Binary string
	// Log receives lifecycle events; nil means slog.Default().
	Log *slog.Logger
}

var _ hypervisor.Backend = Backend{}

// Name implements hypervisor.Backend.
func (b Backend) Name() string { return "firecracker" }

// Available implements hypervisor.Backend: it needs the firecracker binary
// and hardware KVM.
func (b Backend) Available() error {
	var errs []error
	if _, err := b.binary(); err != nil {
		errs = append(errs, err)
	}
	if err := hypervisor.KVMUsable(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil
	}
	return unavailableError(errs)
}

// unavailableError lists everything that keeps the backend from running.
type unavailableError []error

func (e unavailableError) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return "firecracker backend unavailable: " + strings.Join(msgs, "; ")
}

func (e unavailableError) Unwrap() []error { return e }

func (b Backend) binary() (string, error) {
	if b.Binary == "" {
		p, err := exec.LookPath("firecracker")
		if err != nil {
			return "", fmt.Errorf("firecracker not in PATH (install Firecracker, or put it in the runtime bundle)")
		}
		return p, nil
	}
	fi, err := os.Stat(b.Binary)
	if err != nil {
		return "", fmt.Errorf("firecracker binary %s: %w (fix the configured firecracker path)", b.Binary, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("firecracker binary %s is not an executable file (fix the configured firecracker path)", b.Binary)
	}
	return b.Binary, nil
}

func (b Backend) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.Default()
}

// paths are the files of one VM directory.
type paths struct {
	api, vsock, pid, log string
}

func pathsIn(dir string) paths {
	return paths{
		api:   filepath.Join(dir, APISocketName),
		vsock: filepath.Join(dir, VsockSocketName),
		pid:   filepath.Join(dir, PIDFileName),
		log:   filepath.Join(dir, LogFileName),
	}
}

// idRE is what Firecracker accepts as --id.
var idRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

func validate(spec hypervisor.Spec) error {
	if !idRE.MatchString(spec.ID) {
		return fmt.Errorf("id %q must be 1 to 64 letters, digits or hyphens", spec.ID)
	}
	if !filepath.IsAbs(spec.Dir) {
		return fmt.Errorf("directory %q is not absolute", spec.Dir)
	}
	if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("directory %s does not exist", spec.Dir)
	}
	if p := pathsIn(spec.Dir).vsock; len(p) > maxSocketPath {
		return fmt.Errorf("directory %s is too long for unix sockets (%d bytes, limit %d): use a shorter state directory", spec.Dir, len(p), maxSocketPath)
	}
	if spec.VCPUs < 1 || spec.VCPUs > 32 {
		return fmt.Errorf("%d vCPUs: firecracker supports 1 to 32", spec.VCPUs)
	}
	if spec.MemoryMiB < 1 {
		return fmt.Errorf("%d MiB of memory", spec.MemoryMiB)
	}
	if spec.AgentCID < 3 {
		return fmt.Errorf("agent CID %d: it must be 3 or more", spec.AgentCID)
	}
	if spec.MemoryFile != "" {
		return fmt.Errorf("guest memory in a file (%s) is a qemu feature: firecracker's snapshots always write the memory out; leave MemoryFile empty", spec.MemoryFile)
	}
	seen := map[string]bool{}
	for i, d := range spec.Disks {
		if d.ID == "" || d.Path == "" {
			return fmt.Errorf("disk %d needs an id and a path", i)
		}
		if seen[d.ID] {
			return fmt.Errorf("disk id %s is used twice", d.ID)
		}
		seen[d.ID] = true
		if f := d.FileFormat(); f != hypervisor.DiskRaw {
			return fmt.Errorf("disk %s (%s) is %s: firecracker takes raw files only; give it a raw clone of the image (disk.Clone), or use qemu", d.ID, d.Path, f)
		}
		// Firecracker always attaches the root device as /dev/vda.
		if d.Root && i != 0 {
			return fmt.Errorf("root disk %s must be the first disk", d.ID)
		}
	}
	seen = map[string]bool{}
	for i, n := range spec.NICs {
		if n.ID == "" || n.TAP == "" {
			return fmt.Errorf("nic %d needs an id and a tap", i)
		}
		if seen[n.ID] {
			return fmt.Errorf("nic id %s is used twice", n.ID)
		}
		seen[n.ID] = true
	}
	return nil
}

// Start implements hypervisor.Backend. The firecracker process is detached
// from ctx and from the caller's session; ctx only bounds the configuration.
func (b Backend) Start(ctx context.Context, spec hypervisor.Spec) (_ hypervisor.Instance, err error) {
	t0 := time.Now()
	if err := validate(spec); err != nil {
		return nil, fmt.Errorf("firecracker: checking the spec of %s: %w", spec.ID, err)
	}
	if spec.Kernel == "" {
		return nil, fmt.Errorf("firecracker: checking the spec of %s: no kernel", spec.ID)
	}
	l := newLaunch(spec)
	defer func() {
		if err != nil {
			l.rollback()
		}
	}()
	if err := b.spawn(ctx, l); err != nil {
		return nil, err
	}
	c := l.inst.client
	err = l.configure([]apiStep{
		l.loggerStep(ctx),
		{"configuring the machine", func() error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB, SMT: false})
		}},
		{"configuring the boot source", func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: spec.Kernel, BootArgs: spec.Cmdline, InitrdPath: spec.Initrd})
		}},
		{"configuring drives", func() error {
			for _, d := range spec.Disks {
				if err := c.PutDrive(ctx, Drive{DriveID: d.ID, PathOnHost: d.Path, IsRootDevice: d.Root, IsReadOnly: d.ReadOnly}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"configuring network interfaces", func() error {
			for _, n := range spec.NICs {
				if err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: n.ID, HostDevName: n.TAP, GuestMAC: n.MAC}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"configuring vsock", func() error {
			return c.PutVsock(ctx, Vsock{GuestCID: spec.AgentCID, UDSPath: l.p.vsock})
		}},
		{"configuring entropy", func() error {
			return c.PutEntropy(ctx, Entropy{})
		}},
		{"starting the instance", func() error {
			return c.Action(ctx, InstanceStart)
		}},
	})
	if err != nil {
		return nil, err
	}
	l.inst.log.Info("firecracker started", "id", spec.ID, "pid", l.inst.pid, "elapsed", time.Since(t0))
	return l.inst, nil
}

// launch is the start-up of one firecracker process, by Start or Restore:
// cleanups are registered as things are made and undone in reverse when the
// start-up fails.
type launch struct {
	spec    hypervisor.Spec
	p       paths
	console string
	undo    []func()
	// inst is set once the process runs.
	inst *instance
}

// apiStep is one named step of a start-up.
type apiStep struct {
	name string
	fn   func() error
}

func newLaunch(spec hypervisor.Spec) *launch {
	console := spec.ConsoleLog
	if console == "" {
		console = filepath.Join(spec.Dir, ConsoleLogName)
	}
	return &launch{spec: spec, p: pathsIn(spec.Dir), console: console}
}

// step runs fn; its error names the step and the VM.
func (l *launch) step(name string, fn func() error) error {
	if err := fn(); err != nil {
		return fmt.Errorf("firecracker: %s for %s: %w", name, l.spec.ID, err)
	}
	return nil
}

// configure runs API steps in order. When firecracker has died, the error
// quotes the end of its console.
func (l *launch) configure(steps []apiStep) error {
	for _, s := range steps {
		if err := l.step(s.name, s.fn); err != nil {
			if l.inst.Exited() {
				err = fmt.Errorf("%w (firecracker exited; console log %s says: %s)", err, l.console, tail(l.console, 500))
			}
			return err
		}
	}
	return nil
}

// rollback undoes what the start-up made, newest first.
func (l *launch) rollback() {
	for i := len(l.undo) - 1; i >= 0; i-- {
		l.undo[i]()
	}
	l.undo = nil
}

// loggerStep points Firecracker's own log at the VM's firecracker.log.
func (l *launch) loggerStep(ctx context.Context) apiStep {
	return apiStep{"configuring the logger", func() error {
		// Firecracker opens the log file without creating it.
		f, err := os.OpenFile(l.p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		f.Close()
		return l.inst.client.PutLogger(ctx, Logger{LogPath: l.p.log, Level: "Info", ShowLevel: true})
	}}
}

// spawn starts firecracker for l.spec, detached in its own session, writes
// the pid file and waits until the API socket answers.
func (b Backend) spawn(ctx context.Context, l *launch) error {
	bin, err := b.binary()
	if err != nil {
		return fmt.Errorf("firecracker: starting %s: %w", l.spec.ID, err)
	}
	p := l.p
	if err := l.step("clearing stale sockets", func() error {
		if err := removeStaleSocket(p.api); err != nil {
			return err
		}
		return removeStaleSocket(p.vsock)
	}); err != nil {
		return err
	}

	if err := l.step("spawning firecracker", func() error {
		out, err := os.OpenFile(l.console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("opening console log: %w", err)
		}
		defer out.Close()
		cmd := exec.Command(bin, "--api-sock", p.api, "--id", l.spec.ID)
		cmd.Dir = l.spec.Dir
		cmd.Stdin = nil // /dev/null
		cmd.Stdout = out
		cmd.Stderr = out
		pr, err := proc.Start(cmd)
		if err != nil {
			return err
		}
		inst := newInstance(b.log(), l.spec.ID, pr, p)
		go inst.cleanupAtExit()
		l.inst = inst
		l.undo = append(l.undo, func() {
			inst.kill()
			os.Remove(p.api)
			os.Remove(p.vsock)
		})
		return nil
	}); err != nil {
		return err
	}

	if err := l.step("writing the pid file", func() error {
		l.undo = append(l.undo, func() { os.Remove(p.pid) })
		return proc.WritePIDFile(p.pid, l.inst.pid)
	}); err != nil {
		return err
	}

	return l.step("waiting for the api socket", func() error {
		return l.inst.waitSocket(ctx, l.console)
	})
}

// Attach implements hypervisor.Backend. It adopts the firecracker process
// named by the pid file in spec.Dir when that process still runs with this
// VM's API socket and answers on it.
func (b Backend) Attach(ctx context.Context, spec hypervisor.Spec) (hypervisor.Instance, error) {
	p := pathsIn(spec.Dir)
	notRunning := func(why string) error {
		return fmt.Errorf("firecracker: attaching to %s: %s: %w", spec.ID, why, hypervisor.ErrNotRunning)
	}
	pr, err := proc.Adopt(p.pid, func(args []string) (bool, string) { return isOurFirecracker(args, p.api, b.Binary) })
	if err != nil {
		return nil, fmt.Errorf("firecracker: attaching to %s: %w", spec.ID, err)
	}
	pid := pr.PID()
	inst := newInstance(b.log(), spec.ID, pr, p)
	go inst.cleanupAtExit()
	info, err := inst.client.Instance(ctx)
	if err != nil {
		if inst.Exited() {
			return nil, notRunning("it exited")
		}
		inst.close()
		return nil, fmt.Errorf("firecracker: attaching to %s: pid %d runs but its api socket does not answer: %w (if it is hung, kill it: kill %d)", spec.ID, pid, err, pid)
	}
	if info.ID != spec.ID {
		inst.close()
		return nil, fmt.Errorf("firecracker: attaching to %s: the process on %s is instance %q", spec.ID, p.api, info.ID)
	}
	if info.State == StateNotStarted {
		// A previous daemon died while configuring it; nobody can finish that.
		inst.log.Warn("killing firecracker that was never started", "id", spec.ID, "pid", pid)
		inst.Kill()
		return nil, notRunning("it was never booted (killed it)")
	}
	if info.State == StatePaused && len(spec.Disks) > 0 {
		// A restore loads paused and points the drives at the VM's own
		// disks before it resumes. One that stopped in between must never
		// run: its guest would write to the snapshot's disks.
		cfg, err := inst.client.VMConfig(ctx)
		if err != nil {
			inst.close()
			return nil, fmt.Errorf("firecracker: attaching to %s: reading the configuration of pid %d: %w (if it is hung, kill it: kill %d)", spec.ID, pid, err, pid)
		}
		if id := unpatchedDrive(cfg, spec); id != "" {
			inst.log.Warn("killing firecracker whose restore never finished", "id", spec.ID, "pid", pid, "drive", id)
			inst.Kill()
			return nil, notRunning(fmt.Sprintf("its restore from a snapshot never finished, drive %s is not on the VM's disk (killed it)", id))
		}
	}
	inst.log.Info("attached to firecracker", "id", spec.ID, "pid", pid, "state", info.State)
	return inst, nil
}

// isOurFirecracker checks a command line for a firecracker serving api.
func isOurFirecracker(args []string, api, binary string) (bool, string) {
	name := filepath.Base(args[0])
	if name != "firecracker" && (binary == "" || name != filepath.Base(binary)) {
		return false, name + ", not firecracker"
	}
	for i := 1; i+1 < len(args); i++ {
		if args[i] == "--api-sock" && args[i+1] == api {
			return true, ""
		}
	}
	return false, "another firecracker (not serving " + api + ")"
}

// removeStaleSocket removes path unless something answers on it.
func removeStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s is in use by a running process (stop that VM first, or remove the socket if nothing should run there)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// tail returns the last bytes of a log, on one line.
func tail(path string, n int) string {
	if s := logfile.TailText(path, 0, 0, n, " "); s != "" {
		return s
	}
	return "(nothing)"
}

// instance is one firecracker process.
type instance struct {
	log    *slog.Logger
	id     string
	pid    int
	paths  paths
	client *Client
	p      *proc.Process

	requested atomic.Bool
	// cleaned is closed once cleanupAtExit has removed the sockets and the
	// pid file: Wait, Shutdown and Kill return after it, so that a caller
	// never sees an ended VM's files.
	cleaned chan struct{}
}

var _ hypervisor.Instance = (*instance)(nil)

func newInstance(log *slog.Logger, id string, p *proc.Process, paths paths) *instance {
	return &instance{log: log, id: id, pid: p.PID(), paths: paths, client: NewClient(paths.api), p: p, cleaned: make(chan struct{})}
}

// cleanupAtExit waits for the process to exit, then removes the sockets and
// pid file, unless another process has taken the directory over since.
func (i *instance) cleanupAtExit() {
	defer close(i.cleaned)
	<-i.p.Done()
	i.log.Info("firecracker exited", "id", i.id, "pid", i.pid, "how", i.Exit().String())
	if pid, err := proc.ReadPIDFile(i.paths.pid); err == nil && pid == i.pid {
		os.Remove(i.paths.api)
		os.Remove(i.paths.vsock)
		os.Remove(i.paths.pid)
	}
	i.client.Close()
}

// close releases what the instance holds without touching the process.
func (i *instance) close() {
	i.client.Close()
	i.p.Close()
}

// PID implements hypervisor.Instance.
func (i *instance) PID() int { return i.pid }

// Exited implements hypervisor.Instance.
func (i *instance) Exited() bool { return i.p.Exited() }

// Exit implements hypervisor.Instance.
func (i *instance) Exit() hypervisor.Exit {
	e, ok := i.p.Exit()
	return hypervisor.Exit{Known: ok, Code: e.Code, Signal: e.Signal, Requested: i.requested.Load()}
}

// MarkRequested records that banger itself ends the process (the guest
// agent's shutdown), so that its exit is not taken for a crash.
func (i *instance) MarkRequested() { i.requested.Store(true) }

// Wait implements hypervisor.Instance.
func (i *instance) Wait(ctx context.Context) error {
	if err := i.p.Wait(ctx); err != nil {
		return fmt.Errorf("waiting for firecracker %s to exit: %w", i.id, ctx.Err())
	}
	return i.waitCleaned(ctx)
}

// waitCleaned waits for cleanupAtExit after the process has exited.
func (i *instance) waitCleaned(ctx context.Context) error {
	select {
	case <-i.cleaned:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("removing firecracker %s's sockets: %w", i.id, ctx.Err())
	}
}

// waitSocket waits until the API socket accepts connections, the process
// exits, or ctx ends.
func (i *instance) waitSocket(ctx context.Context, console string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.Dial("unix", i.paths.api)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-i.p.Done():
			return fmt.Errorf("firecracker exited before serving %s; console log %s says: %s", i.paths.api, console, tail(console, 500))
		case <-ctx.Done():
			return fmt.Errorf("%s never accepted connections: %w", i.paths.api, ctx.Err())
		case <-tick.C:
		}
	}
}

// DialAgent implements hypervisor.Instance over Firecracker's hybrid vsock.
func (i *instance) DialAgent(ctx context.Context) (net.Conn, error) {
	if i.Exited() {
		return nil, fmt.Errorf("dialing the agent of %s: %w", i.id, hypervisor.ErrNotRunning)
	}
	return dialVsock(ctx, i.paths.vsock, agent.Port)
}

// Shutdown implements hypervisor.Instance: it sends Ctrl-Alt-Del, which makes
// the guest reboot, which ends Firecracker.
func (i *instance) Shutdown(ctx context.Context) error {
	if i.Exited() {
		return i.waitCleaned(ctx)
	}
	i.requested.Store(true)
	if err := i.client.Action(ctx, SendCtrlAltDel); err != nil {
		if i.Exited() {
			return i.waitCleaned(ctx)
		}
		return fmt.Errorf("firecracker: shutting down %s: %w", i.id, err)
	}
	select {
	case <-i.p.Done():
		return i.waitCleaned(ctx)
	case <-ctx.Done():
		return fmt.Errorf("firecracker: waiting for %s to shut down: %w (the guest ignored Ctrl-Alt-Del; kill the VM instead)", i.id, ctx.Err())
	}
}

// Kill implements hypervisor.Instance: SIGTERM, then SIGKILL.
func (i *instance) Kill() error {
	if i.Exited() {
		<-i.cleaned
		return nil
	}
	i.requested.Store(true)
	if err := i.p.Kill(termGrace, killGrace); err != nil {
		return fmt.Errorf("firecracker: killing %s: %w", i.id, err)
	}
	<-i.cleaned
	return nil
}

// kill sends SIGKILL and waits a bounded time for the exit.
func (i *instance) kill() {
	i.requested.Store(true)
	i.p.Kill(0, killGrace)
}
