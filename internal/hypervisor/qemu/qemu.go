// Package qemu runs microVMs with QEMU's microvm machine, under KVM when it works and TCG otherwise.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/runner"
)

// DefaultBinary is the QEMU system emulator used when Backend.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// TCGCmdline is appended to the kernel command line under TCG: without an
// early TSC frequency the guest kernel hangs calibrating the TSC. And
// mitigations=off: the kernel takes the emulated Intel CPU for one that
// speculates (Meltdown, Spectre, MDS) and would isolate its page tables and
// clear buffers at every system call, which costs TCG a TLB flush each
// time (a process start took about 100 ms more). TCG does not reproduce
// the hardware behaviour they defend against (it checks every access's
// page permissions in software, per privilege level), so they protect
// nothing there; under KVM the guest runs on the real CPU and keeps them.
const TCGCmdline = "tsc_early_khz=2000000 mitigations=off"

// TCGCPU is the CPU model under TCG. Guests need x86-64-v2 (SSE4.2, POPCNT:
// the docker image's opencode dies on SIGILL without them), which QEMU's
// default qemu64 lacks; "max" hangs the kernel's TSC calibration.
const TCGCPU = "Nehalem"

// Files in Spec.Dir that the backend owns.
const (
	PIDFile     = "qemu.pid"
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	LogFile     = "qemu.log"
)

// maxSocketPath is the longest path a unix socket address can hold.
const maxSocketPath = 107

// Backend runs VMs with QEMU. The zero value is ready to use.
type Backend struct {
	// Binary is the QEMU executable; empty means DefaultBinary.
	Binary string
	// Accel is "kvm", "tcg", or empty: kvm when hypervisor.KVMUsable
	// reports nil, tcg otherwise.
	Accel string
	// Wrap is an argv prefix for the QEMU process, for example
	// {"ip", "netns", "exec", name} so its TAPs are opened in a namespace.
	Wrap []string
	// Log receives debug records; nil means slog.Default().
	Log *slog.Logger

	// vsock overrides the /dev/vhost-vsock check (tests).
	vsock func() bool

	// Version's answer, for the binary identified by verKey.
	verMu       sync.Mutex
	ver, verKey string
}

var (
	_ hypervisor.Backend     = (*Backend)(nil)
	_ hypervisor.FormatTaker = (*Backend)(nil)
	_ hypervisor.MemoryFiler = (*Backend)(nil)
)

// TakesMemoryFile implements hypervisor.MemoryFiler.
func (b *Backend) TakesMemoryFile() bool { return true }

// TakesFormat implements hypervisor.FormatTaker: raw files and qcow2
// overlays.
func (b *Backend) TakesFormat(f hypervisor.DiskFormat) bool { return f.Valid() }

// Name implements hypervisor.Backend.
func (b *Backend) Name() string { return "qemu" }

// Available implements hypervisor.Backend.
func (b *Backend) Available() error {
	if _, err := exec.LookPath(b.binary()); err != nil {
		return fmt.Errorf("finding %s: %w (it is in the Debian package qemu-system-x86: run apt-get install qemu-system-x86)", b.binary(), err)
	}
	return nil
}

func (b *Backend) binary() string {
	if b.Binary != "" {
		return b.Binary
	}
	return DefaultBinary
}

func (b *Backend) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.Default()
}

// accel resolves the accelerator.
func (b *Backend) accel() string {
	if b.Accel != "" {
		return b.Accel
	}
	if hypervisor.KVMUsable() == nil {
		return "kvm"
	}
	return "tcg"
}

// useVsock reports whether the agent channel is vhost-vsock rather than
// virtio-serial.
func (b *Backend) useVsock() bool {
	if b.vsock != nil {
		return b.vsock()
	}
	_, err := os.Stat("/dev/vhost-vsock")
	return err == nil
}

// Command returns the QEMU argv for spec, starting with the binary and
// without Wrap. QEMU daemonizes (-daemonize, -pidfile) once the machine is
// built; a caller that wants it in the foreground drops those two options.
func (b *Backend) Command(spec hypervisor.Spec) []string {
	return b.layoutOf(spec).argv(b.binary())
}

// consolePath is where the guest console goes: spec.ConsoleLog, or
// console.log in the runtime dir.
func consolePath(spec hypervisor.Spec) string {
	if spec.ConsoleLog != "" {
		return spec.ConsoleLog
	}
	return filepath.Join(spec.Dir, "console.log")
}

func qmpChardev(dir string) string {
	return "socket,id=qmp,path=" + opt(filepath.Join(dir, QMPSocket)) + ",server=on,wait=off"
}

// opt escapes a value inside a QEMU key=value option list.
func opt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

var qemuID = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]*$`)

func validate(spec hypervisor.Spec) error {
	var errs []error
	if spec.ID == "" {
		errs = append(errs, errors.New("empty id"))
	}
	if !filepath.IsAbs(spec.Dir) {
		errs = append(errs, fmt.Errorf("runtime dir %q is not absolute", spec.Dir))
	}
	for _, name := range []string{QMPSocket, AgentSocket} {
		if p := filepath.Join(spec.Dir, name); len(p) > maxSocketPath {
			errs = append(errs, fmt.Errorf("socket path %s is longer than %d bytes (use a shorter runtime dir)", p, maxSocketPath))
		}
	}
	if spec.Kernel == "" {
		errs = append(errs, errors.New("no kernel"))
	}
	if spec.VCPUs < 1 || spec.MemoryMiB < 1 {
		errs = append(errs, fmt.Errorf("%d vcpus and %d MiB memory: both must be positive", spec.VCPUs, spec.MemoryMiB))
	}
	for _, d := range spec.Disks {
		if !qemuID.MatchString(d.ID) {
			errs = append(errs, fmt.Errorf("disk id %q must be a letter followed by letters, digits, '.', '-' or '_'", d.ID))
		}
		if !d.Format.Valid() {
			errs = append(errs, fmt.Errorf("disk %s has format %q: use %s or %s", d.ID, d.Format, hypervisor.DiskRaw, hypervisor.DiskQcow2))
		}
	}
	if spec.MemoryFile != "" && !filepath.IsAbs(spec.MemoryFile) {
		errs = append(errs, fmt.Errorf("memory file %q is not absolute", spec.MemoryFile))
	}
	for _, n := range spec.NICs {
		if !qemuID.MatchString(n.ID) {
			errs = append(errs, fmt.Errorf("nic id %q must be a letter followed by letters, digits, '.', '-' or '_'", n.ID))
		}
		if n.TAP == "" || n.MAC == "" {
			errs = append(errs, fmt.Errorf("nic %s needs a tap and a mac", n.ID))
		}
	}
	errs = append(errs, validateShares(spec)...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("checking spec of vm %s: %w", spec.ID, err)
	}
	return nil
}

// Start implements hypervisor.Backend. QEMU detaches from the caller: it
// outlives ctx and the calling process.
func (b *Backend) Start(ctx context.Context, spec hypervisor.Spec) (_ hypervisor.Instance, err error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	// QEMU running as root would create a missing TAP itself, off the
	// bridge, and the guest would never answer.
	for _, nic := range spec.NICs {
		if _, err := net.InterfaceByName(nic.TAP); err != nil && len(b.Wrap) == 0 {
			return nil, fmt.Errorf("starting vm %s: its TAP device %s is missing: %w", spec.ID, nic.TAP, err)
		}
	}
	if inst, err := b.find(spec); err == nil {
		inst.p.Close()
		return nil, fmt.Errorf("starting vm %s: qemu already runs for it as pid %d (stop it first)", spec.ID, inst.pid)
	}
	for _, name := range []string{PIDFile, QMPSocket, AgentSocket, RestoringFile} {
		if err := os.Remove(filepath.Join(spec.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale %s of vm %s: %w", name, spec.ID, err)
		}
	}
	if spec.MemoryFile != "" {
		// A fresh, private, sparse file: QEMU maps it shared and the guest's
		// RAM lives there. An existing one may be a snapshot's, which
		// restored VMs map: it is never reused or truncated.
		f, err := os.OpenFile(spec.MemoryFile, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("starting vm %s: creating its memory file: %w (remove it, or choose another path)", spec.ID, err)
		}
		err = f.Truncate(int64(spec.MemoryMiB) << 20)
		f.Close()
		if err != nil {
			os.Remove(spec.MemoryFile)
			return nil, fmt.Errorf("starting vm %s: sizing its memory file %s: %w", spec.ID, spec.MemoryFile, err)
		}
		defer func() {
			if err != nil {
				os.Remove(spec.MemoryFile)
			}
		}()
	}
	// QEMU daemonizes with umask 027: make its files first, private, and
	// it appends to them.
	for _, p := range []string{consolePath(spec), filepath.Join(spec.Dir, LogFile), filepath.Join(spec.Dir, PIDFile)} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("starting vm %s: creating %s: %w", spec.ID, p, err)
		}
		f.Close()
	}
	logPath := filepath.Join(spec.Dir, LogFile)
	var logOffset int64
	if fi, err := os.Stat(logPath); err == nil {
		logOffset = fi.Size()
	}

	argv := append(slices.Clone(b.Wrap), b.Command(spec)...)
	b.log().Debug("starting qemu", "vm", spec.ID, "argv", argv)
	t0 := time.Now()
	if _, err := runner.Default.Run(ctx, argv[0], argv[1:]...); err != nil {
		// QEMU writes its complaint to the -D log, not to stderr.
		msg := tail(logPath, logOffset)
		b.killStray(spec)
		if msg != "" {
			// QEMU's message says it all; the argv is in the debug log.
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				err = exit
			}
			return nil, fmt.Errorf("starting qemu for vm %s: %s: %w (fix the spec or the host, see %s)", spec.ID, msg, err, logPath)
		}
		return nil, fmt.Errorf("starting qemu for vm %s: %w (see %s)", spec.ID, err, logPath)
	}
	inst, st, err := b.adopt(ctx, spec)
	if err == nil && !st.Running {
		inst.p.Close()
		err = fmt.Errorf("vm state is %q, not running (see %s)", st.Status, consolePath(spec))
	}
	if err != nil {
		b.killStray(spec)
		return nil, fmt.Errorf("starting qemu for vm %s: %w", spec.ID, err)
	}
	b.log().Debug("qemu started", "vm", spec.ID, "pid", inst.pid, "took", time.Since(t0))
	return inst, nil
}

// killStray ends a QEMU that a failed Start left behind.
func (b *Backend) killStray(spec hypervisor.Spec) {
	inst, err := b.find(spec)
	if err != nil {
		return
	}
	inst.requested.Store(true)
	inst.p.Kill(0, 5*time.Second)
}

// Attach implements hypervisor.Backend. A QEMU whose restore never
// finished (RestoringFile is still there: a daemon died during Restore) is
// killed: nobody can tell what state its guest is in.
func (b *Backend) Attach(ctx context.Context, spec hypervisor.Spec) (hypervisor.Instance, error) {
	inst, _, err := b.adopt(ctx, spec)
	if err != nil {
		return nil, err
	}
	marker := filepath.Join(spec.Dir, RestoringFile)
	if _, err := os.Stat(marker); err == nil {
		b.log().Warn("killing qemu whose restore never finished", "vm", spec.ID, "pid", inst.pid)
		inst.requested.Store(true)
		kerr := inst.p.Kill(0, 10*time.Second)
		for _, name := range []string{PIDFile, QMPSocket, AgentSocket, RestoringFile} {
			os.Remove(filepath.Join(spec.Dir, name))
		}
		if kerr != nil {
			return nil, fmt.Errorf("attaching to qemu pid %d of vm %s: its restore never finished, and killing it failed: %w", inst.pid, spec.ID, kerr)
		}
		return nil, fmt.Errorf("attaching to qemu of vm %s: its restore from a snapshot never finished (killed it): %w", spec.ID, hypervisor.ErrNotRunning)
	}
	return inst, nil
}

// lookPath finds bin as exec.LookPath does.
func lookPath(bin string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("finding %s: %w (it is in the Debian package qemu-system-x86: run apt-get install qemu-system-x86)", bin, err)
	}
	return p, nil
}

// adopt finds the QEMU of spec through its pid file and checks that its
// monitor answers.
func (b *Backend) adopt(ctx context.Context, spec hypervisor.Spec) (*instance, qmpStatus, error) {
	inst, err := b.find(spec)
	if err != nil {
		return nil, qmpStatus{}, err
	}
	st, err := inst.status(ctx)
	if err != nil {
		if inst.Exited() {
			return nil, st, fmt.Errorf("attaching to qemu of vm %s: %w", spec.ID, hypervisor.ErrNotRunning)
		}
		inst.p.Close()
		return nil, st, fmt.Errorf("attaching to qemu pid %d of vm %s: %w", inst.pid, spec.ID, err)
	}
	b.log().Debug("qemu monitor answers", "vm", spec.ID, "pid", inst.pid, "status", st.Status)
	return inst, st, nil
}

// find reads the pid file and verifies that the process is the QEMU of spec.
func (b *Backend) find(spec hypervisor.Spec) (*instance, error) {
	var vsock bool
	p, err := proc.Adopt(filepath.Join(spec.Dir, PIDFile), func(args []string) (bool, string) {
		vsock = slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "vhost-vsock-device") })
		if !isOurs(args, spec) {
			return false, "not the qemu of vm " + spec.ID
		}
		return true, ""
	})
	if err != nil {
		return nil, err
	}
	return &instance{b: b, spec: spec, pid: p.PID(), vsock: vsock, p: p}, nil
}

// isOurs reports whether args is a QEMU command line for spec: the same name
// and the same monitor socket.
func isOurs(args []string, spec hypervisor.Spec) bool {
	var name, qmp bool
	want := qmpChardev(spec.Dir)
	for i, a := range args {
		if a == "-name" && i+1 < len(args) && args[i+1] == opt(spec.ID) {
			name = true
		}
		if a == want {
			qmp = true
		}
	}
	return name && qmp
}

// tail returns what was appended to path after offset, trimmed to its last
// 2000 bytes.
func tail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	data, _ := io.ReadAll(f)
	s := strings.TrimSpace(string(data))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}
