// Package vm is banger's VM engine: it creates, boots, stops, adopts and deletes VMs through a hypervisor backend and the host capabilities each VM needs.
package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
)

// VM states.
const (
	StateCreating = "creating"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateError    = "error"
	// StateSuspended: the guest's memory and devices are saved in the VM's
	// directory, and no hypervisor runs (suspend); resume restores them.
	StateSuspended = "suspended"
	// StateSuspending: a suspend is under way; a daemon that finds a VM in
	// it finishes or undoes it (Adopt).
	StateSuspending = "suspending"
)

// hostLive reports whether vm's host side (NAT and egress rules, published
// ports) is to be in place: its hypervisor runs, booting or running, or is
// being suspended (a daemon that adopts it then resumes it or ends it, and
// only the end releases them).
func hostLive(vm *store.VM) bool {
	return vm.PID != 0 && (vm.State == StateRunning || vm.State == StateStarting || vm.State == StateSuspending)
}

// Config is what an Engine is made of. Everything host-integrated comes in
// through Capabilities, in the order they are prepared.
type Config struct {
	Store *store.Store
	// Backends are the hypervisors by name; Hypervisor picks one for new VMs
	// ("auto", "firecracker" or "qemu"), and Backend overrides how one is
	// found for a bundle (Firecracker may come with it).
	Backends   map[string]hypervisor.Backend
	Hypervisor string
	// Bundle loads the runtime bundle (cached: see BundleCache).
	Bundle func() (*bundle.Bundle, error)
	Images *Images
	// Capabilities are the VM's host integrations (NewCapabilities).
	Capabilities []Capability
	// Network decides the guests' addresses and TAP names.
	Network *network.Manager
	Names   network.Names
	Runner  runner.Runner
	Log     *slog.Logger
	// DataDir holds the VMs' disks (vms/<id>); RuntimeDir their sockets.
	DataDir, RuntimeDir string
	// PrivateDirs are host directories no host folder of a VM may hold or
	// be inside (banger's state; the bundle is added to them).
	PrivateDirs []string
	// Defaults of a create that names no size.
	VCPUs, MemoryMiB int
	// WorkSize is the size of a new VM's /root disk (0: DefaultWorkSize).
	WorkSize int64
	// MaxMemoryMiB bounds a VM's memory (the host's); 0: no bound.
	MaxMemoryMiB int
	ReadyTimeout time.Duration
	// EarlyStall is how long a cold boot's console may say nothing before
	// its kernel has started init: then the boot is tried once more
	// (console.Watch). 0 means DefaultEarlyStall; negative, never.
	EarlyStall time.Duration
	// ConsoleLogMax caps each running VM's console log, rotating it past
	// that (logfile.Rotate); 0 means 8 MiB.
	ConsoleLogMax int64
	// WarmAfterCreate snapshots an image's VM in the background after a
	// cold create of it whose image has no snapshot that fits.
	WarmAfterCreate bool
	// Requirements checks the host tools and sudo an operation needs
	// (doctor.Require); nil checks nothing.
	Requirements func(ctx context.Context, ops ...string) error
	// KeyFile is the private key banger logs into guests with, given the
	// bundle; nil means the bundle's.
	KeyFile func(b *bundle.Bundle) string
	// Dial reaches a guest's TCP port (the SSH check); nil means the
	// host's network.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Engine runs VMs. Its lifetime context (Close ends it) owns every long
// operation and every hypervisor watcher, never an RPC request's.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	caps capabilities

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	locks keyedLocks // by VM name
	// portsMu serialises the checks and records of published ports across
	// VMs, whose name locks do not exclude each other.
	portsMu sync.Mutex
	tlocks  keyedLocks // template builds, by image name
	disks   *disks

	mu         sync.Mutex
	instances  map[string]hypervisor.Instance // by VM id
	booting    map[string]context.CancelFunc  // readiness waits, by VM id
	building   map[string]bool                // template builds under way, by image
	warmFailed map[string]time.Time           // the last failed template build, by image
}

// New returns an engine; Adopt it to the VMs on record before use.
func New(cfg Config) *Engine {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Runner == nil {
		cfg.Runner = runner.Default
	}
	if cfg.ConsoleLogMax == 0 {
		cfg.ConsoleLogMax = 8 << 20
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 5 * time.Minute
	}
	if cfg.EarlyStall == 0 {
		cfg.EarlyStall = DefaultEarlyStall
	}
	if cfg.WorkSize == 0 {
		cfg.WorkSize = DefaultWorkSize
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.Requirements == nil {
		cfg.Requirements = func(context.Context, ...string) error { return nil }
	}
	e := &Engine{cfg: cfg, log: cfg.Log, caps: cfg.Capabilities,
		instances: map[string]hypervisor.Instance{}, booting: map[string]context.CancelFunc{},
		building: map[string]bool{}, warmFailed: map[string]time.Time{},
		disks: &disks{dataDir: cfg.DataDir, r: cfg.Runner, log: cfg.Log}}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e
}

// Close ends the engine's lifetime: readiness waits stop (the VMs keep
// booting; the next engine finishes them) and watchers end. Running VMs
// keep running.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
}

// Go runs fn in a goroutine that Close waits for.
func (e *Engine) Go(fn func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
}

// Context is the engine's lifetime.
func (e *Engine) Context() context.Context { return e.ctx }

// Store is the engine's state.
func (e *Engine) Store() *store.Store { return e.cfg.Store }

// Images is the engine's image catalogue.
func (e *Engine) Images() *Images { return e.cfg.Images }

// Bundle loads the runtime bundle, refusing with ErrUnavailable.
func (e *Engine) Bundle() (*bundle.Bundle, error) {
	b, err := e.cfg.Bundle()
	return b, unavailable(err)
}

// Backend returns the backend new VMs get, given the bundle.
func (e *Engine) Backend(b *bundle.Bundle) (hypervisor.Backend, error) {
	fc, _ := e.backend("firecracker", b)
	q, _ := e.backend("qemu", b)
	if fc == nil || q == nil {
		return nil, errors.New("both the firecracker and the qemu backends must be configured")
	}
	return hypervisor.Select(e.cfg.Hypervisor, fc, q)
}

// bootBackend is the bundle and the backend that boot or restore vm: its
// hypervisor's, which must be available on this host.
func (e *Engine) bootBackend(vm *store.VM) (*bundle.Bundle, hypervisor.Backend, error) {
	b, err := e.Bundle()
	if err != nil {
		return nil, nil, err
	}
	be, ok := e.backend(vm.Hypervisor, b)
	if !ok {
		return nil, nil, fmt.Errorf("VM %s uses unknown hypervisor %q", vm.Name, vm.Hypervisor)
	}
	if err := be.Available(); err != nil {
		return nil, nil, unavailable(fmt.Errorf("VM %s needs %s: %w", vm.Name, be.Name(), err))
	}
	return b, be, nil
}

// backend returns the named backend. Firecracker's binary may come with
// the bundle (b, when given): a Backend that implements WithBundle says how.
func (e *Engine) backend(name string, b *bundle.Bundle) (hypervisor.Backend, bool) {
	be, ok := e.cfg.Backends[name]
	if !ok {
		return nil, false
	}
	if wb, ok := be.(interface {
		WithBundle(b *bundle.Bundle) hypervisor.Backend
	}); ok && b != nil {
		return wb.WithBundle(b), true
	}
	return be, true
}

// vmDirs are a VM's data and runtime directories.
func (e *Engine) vmDirs(id string) (data, rt string) {
	return filepath.Join(e.cfg.DataDir, "vms", id), filepath.Join(e.cfg.RuntimeDir, "vms", id)
}

// Get finds a VM by name, or by id or a unique id prefix.
func (e *Engine) Get(ctx context.Context, nameOrID string) (*store.VM, error) {
	vm, err := e.cfg.Store.GetVM(ctx, nameOrID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("no VM named %s: see 'banger vm list'", truncate(nameOrID, 64))
	}
	if errors.Is(err, store.ErrAmbiguous) {
		return nil, invalid("%w", err)
	}
	return vm, err
}

// List returns every VM.
func (e *Engine) List(ctx context.Context) ([]store.VM, error) { return e.cfg.Store.ListVMs(ctx) }

// byName finds a VM by its exact name (never by id prefix).
func (e *Engine) byName(ctx context.Context, name string) (*store.VM, error) {
	vms, err := e.cfg.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	for i := range vms {
		if vms[i].Name == name {
			return &vms[i], nil
		}
	}
	return nil, store.ErrNotFound
}

// lockVM resolves a name or id and takes that VM's lock, keyed by its name
// (as creates are), then reads it again under the lock.
func (e *Engine) lockVM(ctx context.Context, nameOrID string) (*store.VM, func(), error) {
	vm, err := e.Get(ctx, nameOrID)
	if err != nil {
		return nil, nil, err
	}
	unlock := e.locks.lock(vm.Name)
	name := vm.Name
	vm, err = e.Get(ctx, vm.ID)
	if errors.Is(err, ErrNotFound) {
		err = notFound("VM %s was deleted meanwhile: see 'banger vm list'", name)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return vm, unlock, nil
}

// lockInstance takes a VM's lock (lockVM) and finds its live hypervisor
// instance (instance); on error nothing is held.
func (e *Engine) lockInstance(ctx context.Context, nameOrID string) (*store.VM, hypervisor.Instance, func(), error) {
	vm, unlock, err := e.lockVM(ctx, nameOrID)
	if err != nil {
		return nil, nil, nil, err
	}
	inst, err := e.instance(ctx, vm)
	if err != nil {
		unlock()
		return nil, nil, nil, err
	}
	return vm, inst, unlock, nil
}

// instance returns vm's live hypervisor instance, adopting it when this
// engine has not seen it yet, or nil when it is not running. An error means
// a process may still run but cannot be controlled: acting as if it were
// gone could put two hypervisors on one VM's disks.
func (e *Engine) instance(ctx context.Context, vm *store.VM) (hypervisor.Instance, error) {
	e.mu.Lock()
	inst := e.instances[vm.ID]
	e.mu.Unlock()
	if inst != nil && !inst.Exited() {
		return inst, nil
	}
	be, ok := e.backend(vm.Hypervisor, nil)
	if !ok || vm.PID == 0 {
		return nil, nil
	}
	inst, err := be.Attach(ctx, e.spec(vm))
	if errors.Is(err, hypervisor.ErrNotRunning) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the hypervisor of %s (pid %d) does not answer: %w (kill it, then retry)", vm.Name, vm.PID, err)
	}
	e.track(vm, inst)
	return inst, nil
}

// track remembers vm's instance and watches it.
func (e *Engine) track(vm *store.VM, inst hypervisor.Instance) {
	e.mu.Lock()
	e.instances[vm.ID] = inst
	e.mu.Unlock()
	e.watch(vm.ID, vm.Name, inst)
	e.Go(func() { e.capConsole(vm.Name, ConsoleLog(vm), inst) })
}

// spec builds the hypervisor spec of vm, less what booting adds (kernel,
// initrd, command line): that is enough to adopt a running hypervisor.
func (e *Engine) spec(vm *store.VM) hypervisor.Spec {
	return hypervisor.Spec{
		ID:         vm.ID,
		Dir:        vm.RuntimeDir,
		VCPUs:      vm.VCPUs,
		MemoryMiB:  vm.MemoryMiB,
		ConsoleLog: ConsoleLog(vm),
		AgentCID:   vm.CID,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: RootDisk(vm), Root: true, Format: hypervisor.DiskFormat(vm.DiskFormat)},
			{ID: "work", Path: WorkDisk(vm), Format: hypervisor.DiskFormat(vm.DiskFormat)},
		},
		NICs:   []hypervisor.NIC{{ID: "eth0", TAP: vm.TAP, MAC: vm.MAC}},
		Shares: hypervisorShares(vm),
	}
}

// agentFor is a client of the guest agent of vm's running instance.
func (e *Engine) agentFor(vm *store.VM) (*agent.Client, error) {
	e.mu.Lock()
	inst := e.instances[vm.ID]
	e.mu.Unlock()
	if inst == nil || inst.Exited() {
		return nil, fmt.Errorf("VM %s is not running", vm.Name)
	}
	return &agent.Client{Dial: inst.DialAgent}, nil
}

// ConsoleLog is the file of vm's serial console.
func ConsoleLog(vm *store.VM) string { return filepath.Join(vm.Dir, "console.log") }

// removeRuntime deletes a VM's runtime directory.
func removeRuntime(vm *store.VM) error {
	if err := os.RemoveAll(vm.RuntimeDir); err != nil {
		return fmt.Errorf("removing the runtime dir of VM %s: %w", vm.Name, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
