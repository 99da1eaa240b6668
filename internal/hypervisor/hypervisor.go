// Package hypervisor defines the interface that every VM backend (qemu, firecracker) implements.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotRunning is returned when an instance's process is gone.
var ErrNotRunning = errors.New("hypervisor process is not running")

// Spec describes one VM to boot. Paths are absolute.
type Spec struct {
	// ID is the VM's unique id (also used as the hypervisor's --id).
	ID string
	// Dir is the per-VM runtime directory for sockets, pid file and logs.
	// It exists before Start is called.
	Dir string
	// Kernel is the ELF vmlinux; Initrd the initramfs.
	Kernel string
	Initrd string
	// Cmdline is the complete kernel command line, less backend-specific
	// additions (the backend may append, e.g. tsc_early_khz for qemu TCG).
	Cmdline   string
	VCPUs     int
	MemoryMiB int
	// Disks in guest order: the first becomes /dev/vda, the second /dev/vdb...
	Disks []Disk
	// NICs in guest order: the first becomes eth0.
	NICs []NIC
	// ConsoleLog is the file that receives the guest serial console.
	ConsoleLog string
	// AgentCID is the guest vsock context id (3 or more).
	AgentCID uint32
	// MemoryFile, when set, holds the guest's RAM: the backend creates it
	// (MemoryMiB large, sparse) and maps it shared, so that a snapshot
	// need not copy RAM at all (a template VM; QEMU only). Snapshot moves
	// the file into the snapshot, after which the instance must never run
	// again. Empty means anonymous memory.
	MemoryFile string
	// Shares are host folders served to the guest over vhost-user
	// (virtio-fs, QEMU only): the backend connects each to its socket,
	// which must be served before Start, and maps guest memory shared so
	// the server can reach it.
	Shares []Share
}

// Share is one virtio-fs device: the guest mounts it by Tag; a vhost-user
// server (virtiofsd) serves it on Socket.
type Share struct {
	Tag    string
	Socket string
}

// DiskFormat is the format of a disk's file.
type DiskFormat string

// Disk formats.
const (
	// DiskRaw is a plain image, byte for byte the guest's disk.
	DiskRaw DiskFormat = "raw"
	// DiskQcow2 is a qcow2 file, usually an overlay over a read-only base
	// (QEMU only: Firecracker takes raw files).
	DiskQcow2 DiskFormat = "qcow2"
)

// Disk is one virtio block device.
type Disk struct {
	ID       string
	Path     string
	ReadOnly bool
	Root     bool
	// Format is the file's format; empty means DiskRaw.
	Format DiskFormat
}

// FileFormat returns d's format, DiskRaw when none is set.
func (d Disk) FileFormat() DiskFormat {
	if d.Format == "" {
		return DiskRaw
	}
	return d.Format
}

// Valid reports whether f is a known format (empty counts as DiskRaw).
func (f DiskFormat) Valid() bool {
	return f == "" || f == DiskRaw || f == DiskQcow2
}

// FormatTaker is implemented by backends that open disk files of formats
// other than raw.
type FormatTaker interface {
	TakesFormat(f DiskFormat) bool
}

// TakesFormat reports whether be opens disk files of format f: every
// backend takes raw files, a FormatTaker says which others.
func TakesFormat(be Backend, f DiskFormat) bool {
	if f == "" || f == DiskRaw {
		return true
	}
	ft, ok := be.(FormatTaker)
	return ok && ft.TakesFormat(f)
}

// MemoryFiler is implemented by backends that can keep a guest's RAM in
// Spec.MemoryFile.
type MemoryFiler interface {
	TakesMemoryFile() bool
}

// NIC is one virtio network device backed by a host TAP.
type NIC struct {
	ID  string
	TAP string
	MAC string
}

// Backend creates instances.
type Backend interface {
	// Name is "qemu" or "firecracker".
	Name() string
	// Available returns nil when the backend can run VMs on this host, or an
	// error that says what is missing and how to fix it.
	Available() error
	// Start boots spec. The hypervisor process must not be tied to ctx: it
	// lives on until Shutdown/Kill, and survives the daemon's death. ctx only
	// bounds the start-up work (spawning, API configuration).
	Start(ctx context.Context, spec Spec) (Instance, error)
	// Attach adopts an instance started earlier (for example by a previous
	// daemon) from the state in spec.Dir. It returns ErrNotRunning when the
	// process is gone.
	Attach(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running hypervisor process.
type Instance interface {
	// PID is the hypervisor process id.
	PID() int
	// DialAgent opens a byte stream to the guest agent.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Shutdown asks the guest to power off (ACPI power button or
	// Ctrl-Alt-Del) and waits for the process to exit or ctx to end.
	Shutdown(ctx context.Context) error
	// Kill ends the process forcefully and waits for it to exit.
	Kill() error
	// Wait blocks until the process exits or ctx ends.
	Wait(ctx context.Context) error
	// Exited reports whether the process has exited.
	Exited() bool
	// Exit says how the process ended, once Exited.
	Exit() Exit
}

// Exit says how a hypervisor process ended, as far as banger can know.
type Exit struct {
	// Known is false when banger cannot tell: it adopted the process from
	// an earlier bangerd, and only a parent learns how its child ended.
	Known bool
	// Code is the exit status; Signal the signal that killed it, or 0.
	Code   int
	Signal syscall.Signal
	// Requested is set when banger ended it (stop, delete, a failed boot).
	Requested bool
}

// Crashed reports an end that nobody asked for: a signal banger did not
// send, or a failure exit status. A guest's own poweroff or reboot exits 0.
func (e Exit) Crashed() bool {
	return e.Known && !e.Requested && (e.Signal != 0 || e.Code != 0)
}

func (e Exit) String() string {
	switch {
	case !e.Known:
		return "it exited (how is unknown: an earlier bangerd started it)"
	case e.Signal != 0:
		s := fmt.Sprintf("it was killed by signal %d (%s)", int(e.Signal), unix.SignalName(e.Signal))
		if e.Requested {
			s += ", by banger"
		}
		return s
	case e.Code != 0:
		return fmt.Sprintf("it exited with status %d", e.Code)
	case e.Requested:
		return "banger stopped it"
	}
	return "it exited cleanly (the guest powered off or rebooted)"
}

// Pauser is implemented by instances that can stop and continue their vCPUs.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Snapshotter is implemented by instances that can save a paused guest.
type Snapshotter interface {
	// Snapshot writes the paused guest's memory and device state into dir
	// (which exists and is empty). The instance stays paused.
	Snapshot(ctx context.Context, dir string) error
}

// Restorer is implemented by backends that boot a VM from a snapshot.
type Restorer interface {
	// Restore starts a new hypervisor process for spec from the snapshot in
	// dir, with the guest's devices bound to spec's disks, NICs and agent
	// channel, and resumes it. The disks' contents must be what they were
	// when the snapshot was taken (copies of the snapshotted VM's disks).
	Restore(ctx context.Context, spec Spec, dir string) (Instance, error)
	// Version identifies the hypervisor build; a snapshot restores only on
	// the same version, so it is recorded with each snapshot.
	Version(ctx context.Context) (string, error)
}

// Select picks the backend for choice ("auto", "firecracker" or "qemu").
// auto prefers firecracker when it is usable (binary present and hardware
// KVM working) and falls back to qemu. The error says why none is usable.
func Select(choice string, firecracker, qemu Backend) (Backend, error) {
	switch choice {
	case "firecracker", "qemu":
		b := qemu
		if choice == "firecracker" {
			b = firecracker
		}
		if err := b.Available(); err != nil {
			return nil, fmt.Errorf("hypervisor %s (from the config) is not usable: %w", choice, err)
		}
		return b, nil
	case "auto", "":
		fcErr := firecracker.Available()
		if fcErr == nil {
			return firecracker, nil
		}
		if err := qemu.Available(); err != nil {
			return nil, fmt.Errorf("no usable hypervisor: %w; %w", fcErr, err)
		}
		return qemu, nil
	}
	return nil, fmt.Errorf("unknown hypervisor %q: use auto, firecracker or qemu", choice)
}
