package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/console"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
)

// CreateOptions describe a new VM. Zero sizes mean the defaults.
type CreateOptions struct {
	Name      string
	Image     string // "" means the default image
	VCPUs     int
	MemoryMiB int
	// DiskSize grows the root disk to this many bytes (never below the
	// image's size); 0 keeps the image's.
	DiskSize int64
	// WorkSize is the size of the /root disk (never below the work-seed's);
	// 0 means the engine's default.
	WorkSize int64
	NAT      bool
	// Cold boots the VM even when a snapshot of its image fits.
	Cold bool
	// Egress is the VM's egress policy; nil is the default. A policy other
	// than open is for outbound traffic, so it turns NAT on.
	Egress *egress.Policy
	// Mounts are host folders the guest mounts at every boot (QEMU only).
	Mounts []store.Mount
	// Ports are published on the host from the first boot.
	Ports []portfwd.Spec
}

// Sizes of the /root disk.
const (
	// DefaultWorkSize is a new VM's /root disk: sparse, so it takes host
	// space only as the guest writes.
	DefaultWorkSize int64 = 16 << 30
	// MinWorkSize and MaxWorkSize bound it; MinWorkSize is the size of the
	// work-seed banger builds.
	MinWorkSize int64 = 64 << 20
	MaxWorkSize int64 = 16 << 40
)

// Plan is a validated create: everything that can be refused is refused
// before anything changes. It carries the bundle it was made with.
type Plan struct {
	Options  CreateOptions
	Bundle   *bundle.Bundle
	Image    *Image
	backend  hypervisor.Backend
	diskSize int64
	mounts   []store.Mount // validated, host folders resolved
	// workSize is the /root disk's size; diskFormat the disks' format.
	workSize   int64
	diskFormat string
	// warm is the template the VM is restored from; nil: it boots cold,
	// and coldReason says why when a snapshot could not be used.
	warm       *template
	coldReason string
	// fork is the running VM a fork copies (its disks, paused, and its
	// memory, from a snapshot).
	fork *store.VM
}

// Warm reports whether the VM will be restored from its image's snapshot,
// and otherwise why not ("" when it was not asked or there is none yet).
func (p *Plan) Warm() (bool, string) { return p.warm != nil, p.coldReason }

// Plan validates a create and resolves its image, bundle and backend.
func (e *Engine) Plan(ctx context.Context, o CreateOptions) (*Plan, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, invalid("%w", err)
	}
	if vm, err := e.byName(ctx, o.Name); err == nil {
		return nil, exists("a VM named %s already exists (%s): pick another name, or remove it with 'banger vm delete %s'", o.Name, vm.State, o.Name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if o.Egress != nil {
		if err := o.Egress.Validate(); err != nil {
			return nil, invalid("%w", err)
		}
		if o.Egress.Effective() != egress.ModeOpen {
			o.NAT = true
		}
	}
	b, err := e.Bundle()
	if err != nil {
		return nil, err
	}
	img, err := e.cfg.Images.Resolve(ctx, b, o.Image)
	if err != nil {
		return nil, err
	}
	if o.VCPUs == 0 {
		o.VCPUs = e.cfg.VCPUs
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = e.cfg.MemoryMiB
	}
	be, err := e.Backend(b)
	if err != nil {
		return nil, unavailable(err)
	}
	mounts, err := ValidateMounts(o.Mounts, append([]string{b.Dir()}, e.cfg.PrivateDirs...))
	if err != nil {
		return nil, invalid("%w", err)
	}
	if len(mounts) > 0 {
		if be, err = e.sharingBackend(b, be); err != nil {
			return nil, err
		}
	}
	// The same tool checks 'banger doctor' reports, so the two never disagree.
	ops := []string{doctor.OpCreate}
	if be.Name() == "qemu" {
		ops = append(ops, doctor.OpQEMU)
	}
	if o.DiskSize != 0 {
		ops = append(ops, doctor.OpDiskSize)
	}
	if o.NAT {
		ops = append(ops, doctor.OpNAT)
	}
	if len(mounts) > 0 {
		ops = append(ops, doctor.OpMounts)
	}
	if e.cfg.Images.SeedStale(img, b) {
		ops = append(ops, doctor.OpWorkSeed)
	}
	if err := e.cfg.Requirements(ctx, ops...); err != nil {
		return nil, unavailable(err)
	}
	if err := ValidateShape(o.VCPUs, o.MemoryMiB, e.cfg.MaxMemoryMiB, be.Name()); err != nil {
		return nil, invalid("%w", err)
	}
	imgSize, err := disk.Size(img.Rootfs)
	if err != nil {
		return nil, unavailable(fmt.Errorf("image %s: %w (rebuild the bundle with 'make runtime-bundle')", img.Name, err))
	}
	p := &Plan{Options: o, Bundle: b, Image: img, backend: be, diskSize: imgSize, mounts: mounts, diskFormat: diskFormatFor(be)}
	if o.DiskSize != 0 {
		if o.DiskSize < imgSize {
			return nil, invalid("disk size %s is smaller than image %s (%s): pick --disk-size %s or more",
				units.FormatSize(o.DiskSize), img.Name, units.FormatSize(imgSize), units.RoundUp(imgSize))
		}
		p.diskSize = o.DiskSize
	}
	if p.workSize, err = e.planWorkSize(img, o.WorkSize); err != nil {
		return nil, err
	}
	e.portsMu.Lock()
	err = e.checkPorts(ctx, "", nil, o.Ports, true)
	e.portsMu.Unlock()
	if err != nil {
		return nil, err
	}
	p.warm, p.coldReason = e.pickWarm(ctx, p)
	return p, nil
}

// sharingBackend is the backend of a VM with host folders: firecracker has
// no shared filesystem device, so with hypervisor = auto QEMU serves it
// instead, and a firecracker chosen by the config is refused.
func (e *Engine) sharingBackend(b *bundle.Bundle, be hypervisor.Backend) (hypervisor.Backend, error) {
	if be.Name() != "firecracker" {
		return be, nil
	}
	if e.cfg.Hypervisor == "firecracker" {
		return nil, invalid("host folders need qemu: firecracker has no shared filesystem device: set hypervisor = \"auto\" or \"qemu\" in config.toml, or copy files with 'banger vm cp'")
	}
	q, ok := e.backend("qemu", b)
	if !ok {
		return nil, unavailable(errors.New("host folders need qemu, and this bangerd has no qemu backend"))
	}
	if err := q.Available(); err != nil {
		return nil, unavailable(fmt.Errorf("host folders need qemu (firecracker has no shared filesystem device): %w", err))
	}
	e.log.Info("host folders: using qemu, firecracker has no shared filesystem device")
	return q, nil
}

// bootFiles are the kernel and initramfs vm boots: its image's own, or the
// bundle's.
func bootFiles(vm *store.VM, b *bundle.Bundle) (kernel, initrd string) {
	if vm.Kernel != "" {
		return vm.Kernel, vm.Initrd
	}
	return b.Path(b.Kernel), b.Path(b.Initrd)
}

// checkBootFiles says clearly when the image kernel a VM boots is gone.
func checkBootFiles(vm *store.VM) error {
	for _, f := range []string{vm.Kernel, vm.Initrd} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return unavailable(fmt.Errorf("VM %s boots its image's own kernel, and %s is gone (%w): put it back, or recreate the VM", vm.Name, f, err))
		}
	}
	return nil
}

// planWorkSize is the size of a new VM's /root disk: asked (at least the
// image's work-seed, at most MaxWorkSize) or the default (at least the
// seed).
func (e *Engine) planWorkSize(img *Image, asked int64) (int64, error) {
	seed, _ := units.ParseSize(workseed.Size) // what a seed still to be built has
	if img.WorkSeed != "" {
		if n, err := disk.Size(img.WorkSeed); err == nil {
			seed = n
		}
	}
	if asked == 0 {
		return max(e.cfg.WorkSize, seed), nil
	}
	if least := max(seed, MinWorkSize); asked < least {
		return 0, invalid("work size %s is too small: a /root of image %s needs %s or more: pick --work-size %s or more",
			units.FormatSize(asked), img.Name, units.FormatSize(least), units.RoundUp(least))
	}
	if asked > MaxWorkSize {
		return 0, invalid("work size %s is more than banger allows (%s): pick a smaller --work-size", units.FormatSize(asked), units.FormatSize(MaxWorkSize))
	}
	return asked, nil
}

// pickWarm returns the template a create restores, or why it boots cold.
func (e *Engine) pickWarm(ctx context.Context, p *Plan) (*template, string) {
	if p.Options.Cold {
		return nil, ""
	}
	if _, ok := p.backend.(hypervisor.Restorer); !ok {
		return nil, ""
	}
	t := e.latestTemplate(p.Image.Name)
	if t != nil && len(p.mounts) > 0 {
		return nil, "host folders need a fresh boot: the snapshot of image " + p.Image.Name + " has no file-sharing devices"
	}
	if t == nil {
		return nil, ""
	}
	if why := e.warmFit(ctx, t, p); why != "" {
		return nil, why
	}
	return t, ""
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Create makes and boots a planned VM, and waits until it is ready, under
// the VM's name lock and the engine's lifetime. A VM whose readiness checks
// fail is kept in the error state with its disks. A warm create whose
// restore fails before its guest ran boots cold instead, and says why.
// After a cold create of an image whose snapshot is missing or stale, the
// snapshot is (re)built in the background.
func (e *Engine) Create(p *Plan, pr Progress) (*store.VM, error) {
	ctx := e.ctx
	unlock := e.locks.lock(p.Options.Name)
	defer func() { unlock() }()
	if vm, err := e.byName(ctx, p.Options.Name); err == nil {
		return nil, exists("a VM named %s already exists (%s): pick another name", p.Options.Name, vm.State)
	}

	st := newStages(pr)
	if p.warm != nil {
		if _, err := readTemplate(p.warm.dir); err != nil {
			p = p.cold(fmt.Sprintf("the snapshot of image %s went away: %v", p.Image.Name, err))
		}
	}
	if p.coldReason != "" {
		e.say(st, p.Options.Name, "cold boot: "+p.coldReason)
	}
	vm, h, err := e.create(ctx, p, st, &unlock)
	if rf := (*restoreFailed)(nil); errors.As(err, &rf) {
		p = p.cold(fmt.Sprintf("restoring the snapshot of image %s failed: %v", p.Image.Name, rf.err))
		e.say(st, p.Options.Name, "cold boot: "+p.coldReason)
		vm, h, err = e.create(ctx, p, newStages(pr), &unlock)
	}
	if err != nil {
		return nil, err
	}
	if e.cfg.WarmAfterCreate && p.warm == nil && !p.Options.Cold && h != nil && h.Answers(agent.OpIdentity) {
		e.warmLater(p)
	}
	return vm, nil
}

// cold is p booting cold, for reason.
func (p *Plan) cold(reason string) *Plan {
	c := *p
	c.warm, c.coldReason = nil, reason
	return &c
}

// say reports a line of a VM's operation to its progress and the log.
func (e *Engine) say(st *stages, name, msg string) {
	st.pr.Log(msg)
	e.log.Info(msg, "vm", name)
}

// restoreFailed is a warm create whose restore failed before its guest
// ran: everything of it is undone, and the create may boot cold.
type restoreFailed struct{ err error }

func (r *restoreFailed) Error() string { return r.err.Error() }
func (r *restoreFailed) Unwrap() error { return r.err }

// create records, makes and boots one VM of p and waits until it is ready,
// returning the guest's last health.
func (e *Engine) create(ctx context.Context, p *Plan, st *stages, unlock *func()) (*store.VM, *agent.Health, error) {
	id := newID()
	dataDir, rtDir := e.vmDirs(id)
	vm := &store.VM{
		ID:            id,
		Name:          p.Options.Name,
		Image:         p.Image.Name,
		State:         StateCreating,
		Hypervisor:    p.backend.Name(),
		VCPUs:         p.Options.VCPUs,
		MemoryMiB:     p.Options.MemoryMiB,
		DiskSizeBytes: p.diskSize,
		WorkSizeBytes: p.workSize,
		NAT:           p.Options.NAT,
		Mounts:        p.mounts,
		Kernel:        p.Image.Kernel,
		Initrd:        p.Image.Initrd,
		Dir:           dataDir,
		RuntimeDir:    rtDir,
		DiskFormat:    p.diskFormat,
	}
	if p.Options.Egress != nil {
		if err := SetPolicy(vm, *p.Options.Egress); err != nil {
			return nil, nil, err
		}
	}
	for _, s := range p.Options.Ports {
		vm.Ports = append(vm.Ports, portOf(s))
	}
	if err := e.record(ctx, vm); err != nil {
		return nil, nil, err
	}
	ip, _ := netip.ParseAddr(vm.IP)
	vm.MAC = network.MAC(ip)

	// Until the hypervisor runs, a failure undoes everything.
	undo := func() {
		uctx := context.WithoutCancel(ctx)
		if err := errors.Join(e.caps.release(uctx, vm), e.caps.destroy(uctx, vm)); err != nil {
			e.log.Warn("undoing a failed create", "vm", vm.Name, "err", err)
		}
		os.RemoveAll(rtDir)
		e.cfg.Store.DeleteVM(uctx, vm.ID)
	}
	err := st.run("preparing disks", func() error { return e.caps.create(ctx, vm, p) })
	if err == nil {
		err = e.cfg.Store.UpdateVM(ctx, vm)
	}
	if err != nil {
		undo()
		return nil, nil, err
	}
	m := bootMode{kind: coldBoot}
	if p.warm != nil {
		m = bootMode{kind: restoreNew, snapshot: p.warm.snapshot(), hostKeys: p.warm.HostKeys, sourceGone: true}
	}
	inst, bs, err := e.boot(ctx, vm, p.Bundle, p.backend, st, m)
	if err != nil {
		undo()
		if m.kind != coldBoot {
			return nil, nil, &restoreFailed{err}
		}
		return nil, nil, err
	}
	h, err := e.finishBoot(ctx, vm, p.Bundle, inst, st, unlock, bs)
	if err != nil {
		return nil, nil, err
	}
	return vm, h, nil
}

// record writes a new VM with its leases. Another VM may have published
// one of its ports since the plan: the check and the record are made under
// the same lock.
func (e *Engine) record(ctx context.Context, vm *store.VM) error {
	e.portsMu.Lock()
	defer e.portsMu.Unlock()
	specs, err := vmSpecs(vm)
	if err != nil {
		return err
	}
	if err := e.checkPorts(ctx, "", nil, specs, false); err != nil {
		return err
	}
	net := e.cfg.Network
	if err := e.cfg.Store.CreateVMWithLease(ctx, vm, net.GuestSubnet(), net.Gateway()); err != nil {
		if errors.Is(err, store.ErrExists) {
			return exists("a VM named %s already exists: pick another name", vm.Name)
		}
		return fmt.Errorf("recording VM %s: %w", vm.Name, err)
	}
	return nil
}

// bootKind says how a boot brings up its guest.
type bootKind int

const (
	// coldBoot boots the kernel from the VM's disks.
	coldBoot bootKind = iota
	// restoreNew restores another machine's snapshot (a template, a fork's
	// source): the guest then gets this VM's own identity.
	restoreNew
	// restoreSame restores the VM's own snapshot (resume): it keeps its
	// identity, and gets the clock and a reseeded RNG.
	restoreSame
)

// bootMode is how one boot brings up its guest: kind, and the snapshot
// directory of a restore.
type bootMode struct {
	kind     bootKind
	snapshot string
	// hostKeys are the SSH host keys of the machine a restoreNew snapshot
	// is of, when they are known (a template's): the restore then sends
	// the new identity at once, without a health request first.
	hostKeys []string
	// sourceGone says that the machine a restoreNew snapshot is of no
	// longer runs (a template's, which ended with its snapshot): its
	// address and MAC are nobody's on the bridge, so the TAP device need
	// not be held down until the guest has its own. Bringing a TAP up
	// costs the guest's first packets up to a second (the kernel
	// activates a device's queue when its link watcher runs).
	sourceGone bool
}

// bootState is what one boot's readiness checks need of it.
type bootState struct {
	bootMode
	guest guestconfig.Config
	// watch and relaunch are a cold boot's: its console, for a kernel that
	// stops in early boot, and how to kill its hypervisor and start
	// another in its place.
	watch    *console.Watch
	relaunch func(ctx context.Context, old hypervisor.Instance) (hypervisor.Instance, error)
}

// identityPending marks, in a VM's directory, a restored guest that still
// has another machine's identity: a daemon that restarts meanwhile gives
// it its own before anything else.
const identityPending = "identity-pending"

// boot brings up vm's network device and hypervisor, booting or restoring
// as m says. On success the hypervisor runs, the VM is recorded as starting
// with its pid, and its instance is watched; on failure everything of this
// boot is released.
func (e *Engine) boot(ctx context.Context, vm *store.VM, b *bundle.Bundle, be hypervisor.Backend, st *stages, m bootMode) (hypervisor.Instance, *bootState, error) {
	// The capabilities fill in the guest's configuration as they ready the
	// host for it (TAP device and address, resolver, NAT); the hypervisor
	// spec is built after them, since they change the VM (its TAP device).
	bs := &bootState{bootMode: m, guest: guestconfig.Config{BaseArgs: b.BootArgs, Root: "/dev/vda", MachineID: machineIDOf(vm.ID)}}
	release := func() {
		// The cause is in the error returned; what releasing fails on
		// (often the same cause) goes to the log, not to the user again.
		if err := e.caps.release(context.WithoutCancel(ctx), vm); err != nil {
			e.log.Warn("releasing after a failed boot", "vm", vm.Name, "err", err)
		}
	}
	if err := checkBootFiles(vm); err != nil {
		release()
		return nil, nil, err
	}
	var cmdline string
	err := st.run("network", func() error {
		if err := e.caps.prepare(ctx, vm, &bs.guest); err != nil {
			return err
		}
		if m.kind == restoreNew && !m.sourceGone {
			if err := e.caps.restoring(ctx, vm); err != nil {
				return err
			}
		}
		var err error
		cmdline, err = bs.guest.Cmdline()
		return err
	})
	if err != nil {
		release()
		return nil, nil, err
	}
	if err := os.MkdirAll(vm.RuntimeDir, 0o700); err != nil {
		release()
		return nil, nil, fmt.Errorf("creating %s: %w", vm.RuntimeDir, err)
	}
	pending := filepath.Join(vm.Dir, identityPending)
	if m.kind == restoreNew {
		if err := markPending(vm, bs.guest.Network); err != nil {
			release()
			return nil, nil, err
		}
	}
	var inst hypervisor.Instance
	stage := "booting " + be.Name()
	if m.kind != coldBoot {
		stage = "restoring " + be.Name()
	}
	spec := e.spec(vm)
	spec.Kernel, spec.Initrd = bootFiles(vm, b)
	spec.Cmdline = cmdline
	err = st.run(stage, func() error {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if m.kind == coldBoot {
			bs.watch = console.New(spec.ConsoleLog, spec.Cmdline, e.cfg.EarlyStall, time.Now())
			var err error
			inst, err = be.Start(sctx, spec)
			return err
		}
		r, ok := be.(hypervisor.Restorer)
		if !ok {
			return fmt.Errorf("the %s backend cannot restore snapshots", be.Name())
		}
		var err error
		inst, err = r.Restore(sctx, spec, m.snapshot)
		return err
	})
	if err != nil {
		os.Remove(pending)
		release()
		return nil, nil, err
	}
	if err := e.recordHypervisor(ctx, vm, be, inst); err != nil {
		os.Remove(pending)
		release()
		return nil, nil, err
	}
	if m.kind == coldBoot {
		bs.relaunch = func(ctx context.Context, old hypervisor.Instance) (hypervisor.Instance, error) {
			if err := old.Kill(); err != nil {
				return nil, fmt.Errorf("ending the stalled hypervisor of %s: %w", vm.Name, err)
			}
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			inst, err := be.Start(sctx, spec)
			if err != nil {
				return nil, err
			}
			if err := ctx.Err(); err != nil {
				// Stopped or deleted meanwhile: its record is theirs.
				inst.Kill()
				return nil, err
			}
			if err := e.recordHypervisor(ctx, vm, be, inst); err != nil {
				return nil, err
			}
			return inst, nil
		}
	}
	st.pr.Booted(vm)
	return inst, bs, nil
}

// recordHypervisor records inst as vm's running hypervisor (the VM
// starting, with its pid) and watches it; when the record fails, it kills
// inst.
func (e *Engine) recordHypervisor(ctx context.Context, vm *store.VM, be hypervisor.Backend, inst hypervisor.Instance) error {
	vm.PID = inst.PID()
	vm.State = StateStarting
	vm.Hypervisor = be.Name()
	vm.Error = ""
	if err := e.cfg.Store.UpdateVM(ctx, vm); err != nil {
		// Without its pid on record a restarted daemon could not adopt it.
		inst.Kill()
		vm.PID = 0
		return fmt.Errorf("recording the hypervisor of %s: %w", vm.Name, err)
	}
	e.track(vm, inst)
	return nil
}

// finishBoot runs the readiness checks of a started VM and records the
// outcome. The VM's name lock (*unlock) is released during the wait and
// taken again before the outcome is recorded, so a stop or delete of a VM
// that boots slowly is not stuck behind it: they cancel the wait instead.
func (e *Engine) finishBoot(ctx context.Context, vm *store.VM, b *bundle.Bundle, inst hypervisor.Instance, st *stages, unlock *func(), bs *bootState) (*agent.Health, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.mu.Lock()
	e.booting[vm.ID] = cancel
	e.mu.Unlock()
	(*unlock)()
	h, inst, err := e.waitReady(rctx, vm, b, inst, st, bs)
	*unlock = e.locks.lock(vm.Name)
	e.mu.Lock()
	delete(e.booting, vm.ID)
	e.mu.Unlock()

	if e.ctx.Err() != nil {
		// bangerd is shutting down: the VM keeps booting, and the next
		// daemon finishes its readiness checks.
		return nil, fmt.Errorf("bangerd stopped while %s was booting: %w", vm.Name, e.ctx.Err())
	}
	cur, gerr := e.cfg.Store.GetVM(ctx, vm.ID)
	if gerr != nil || cur.PID != vm.PID || cur.State != StateStarting {
		return nil, fmt.Errorf("%s was stopped or deleted while it booted", vm.Name)
	}
	if err != nil {
		return nil, e.failBoot(vm, inst, err)
	}
	vm.State = StateRunning
	if err := e.cfg.Store.UpdateVM(ctx, vm); err != nil {
		return nil, err
	}
	e.cfg.Store.ClearStages(ctx, vm.ID)
	for _, s := range st.list() {
		e.cfg.Store.RecordStage(ctx, vm.ID, s.Stage, s.Duration)
	}
	return h, nil
}

// cancelBoot ends the readiness wait of vm, if one runs.
func (e *Engine) cancelBoot(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cancel := e.booting[id]; cancel != nil {
		cancel()
	}
}

// failBoot ends a VM whose readiness checks failed: its hypervisor is
// killed, its network released, and it is kept in the error state with its
// disks.
func (e *Engine) failBoot(vm *store.VM, inst hypervisor.Instance, err error) error {
	inst.Kill()
	e.caps.release(context.Background(), vm)
	vm.State = StateError
	vm.Error = err.Error()
	vm.PID = 0
	e.cfg.Store.UpdateVM(context.Background(), vm)
	return fmt.Errorf("%w\n(the VM is kept in the error state: see its console with 'banger vm logs %s', remove it with 'banger vm delete %s')", err, vm.Name, vm.Name)
}
