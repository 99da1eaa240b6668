package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/store"
)

// suspendDir holds a suspended VM's snapshot in its directory; it exists
// only complete (the snapshot is written beside it and renamed).
const suspendDir = "suspend"

// suspended reports whether vm's directory holds a complete suspend.
func suspended(vm *store.VM) bool {
	_, err := os.Stat(filepath.Join(vm.Dir, suspendDir))
	return err == nil
}

// snapshotter returns inst's pause and snapshot, and be's restore, or an
// error saying what the backend lacks.
func snapshotter(be hypervisor.Backend, inst hypervisor.Instance) (hypervisor.Pauser, hypervisor.Snapshotter, error) {
	pa, ok := inst.(hypervisor.Pauser)
	sn, ok2 := inst.(hypervisor.Snapshotter)
	_, ok3 := be.(hypervisor.Restorer)
	if !ok || !ok2 || !ok3 {
		return nil, nil, invalid("the %s backend cannot snapshot and restore VMs", be.Name())
	}
	return pa, sn, nil
}

// Suspend saves a running VM's memory and devices into its directory and
// ends its hypervisor, freeing the host's RAM; resume (or start) restores
// it, processes and all. A failed suspend leaves the VM running.
func (e *Engine) Suspend(nameOrID string) (*store.VM, error) {
	ctx := e.ctx
	vm, inst, unlock, err := e.lockInstance(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if inst == nil && vm.State == StateSuspended {
		return vm, nil
	}
	if inst == nil || vm.State != StateRunning {
		return nil, invalid("VM %s is %s: only a running VM can be suspended", vm.Name, vm.State)
	}
	if len(vm.Mounts) > 0 {
		return nil, invalid("VM %s has host folders, and QEMU cannot save their virtio-fs devices: stop it instead ('banger vm stop %s'); its folders come back at the next start", vm.Name, vm.Name)
	}
	be, ok := e.backend(vm.Hypervisor, nil)
	if !ok {
		return nil, fmt.Errorf("VM %s uses unknown hypervisor %q", vm.Name, vm.Hypervisor)
	}
	pa, sn, err := snapshotter(be, inst)
	if err != nil {
		return nil, err
	}
	if err := e.cfg.Requirements(ctx, bootOps(vm)...); err != nil {
		return nil, unavailable(err)
	}
	dir := filepath.Join(vm.Dir, suspendDir)
	tmp := dir + ".tmp"
	for _, d := range []string{dir, tmp} {
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	vm.State = StateSuspending
	if err := e.cfg.Store.UpdateVM(ctx, vm); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	t0 := time.Now()
	fail := func(step string, err error) (*store.VM, error) {
		os.RemoveAll(tmp)
		if rerr := pa.Resume(context.WithoutCancel(ctx)); rerr != nil {
			e.log.Error("resuming a VM whose suspend failed", "vm", vm.Name, "err", rerr)
		}
		vm.State = StateRunning
		e.cfg.Store.UpdateVM(context.WithoutCancel(ctx), vm)
		return nil, fmt.Errorf("suspending %s: %s: %w (it keeps running)", vm.Name, step, err)
	}
	if err := pa.Pause(ctx); err != nil {
		return fail("pausing it", err)
	}
	if err := sn.Snapshot(ctx, tmp); err != nil {
		return fail("saving its memory and devices", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail("keeping the snapshot", err)
	}
	if err := e.endSuspended(ctx, vm, inst); err != nil {
		return nil, err
	}
	e.log.Info("suspended VM", "vm", vm.Name, "took", time.Since(t0), "saved", usedBytes(dir))
	return vm, nil
}

// endSuspended ends the hypervisor of a VM whose snapshot is complete and
// records it suspended.
func (e *Engine) endSuspended(ctx context.Context, vm *store.VM, inst hypervisor.Instance) error {
	if r, ok := inst.(interface{ MarkRequested() }); ok {
		r.MarkRequested()
	}
	if err := inst.Kill(); err != nil || !inst.Exited() {
		return fmt.Errorf("suspending %s: its snapshot is saved, but its hypervisor (pid %d) did not exit: %w (kill it, then run 'banger vm suspend %s' again)", vm.Name, inst.PID(), err, vm.Name)
	}
	if err := e.caps.release(ctx, vm); err != nil {
		e.log.Warn("releasing host resources", "vm", vm.Name, "err", err)
	}
	vm.State, vm.PID = StateSuspended, 0
	return e.cfg.Store.UpdateVM(ctx, vm)
}

// finishSuspend settles a VM a daemon found suspending with its hypervisor
// alive: with its snapshot complete it is suspended, otherwise its guest
// goes on running.
func (e *Engine) finishSuspend(name string) {
	vm, inst, unlock, err := e.lockInstance(e.ctx, name)
	if err != nil {
		return
	}
	defer unlock()
	if vm.State != StateSuspending || inst == nil {
		return
	}
	os.RemoveAll(filepath.Join(vm.Dir, suspendDir+".tmp"))
	if suspended(vm) {
		if err := e.endSuspended(e.ctx, vm, inst); err != nil {
			e.log.Error("finishing a suspend", "vm", vm.Name, "err", err)
		}
		return
	}
	if pa, ok := inst.(hypervisor.Pauser); ok {
		if err := pa.Resume(e.ctx); err != nil {
			e.log.Error("resuming a VM whose suspend did not finish", "vm", vm.Name, "err", err)
			return
		}
	}
	vm.State = StateRunning
	e.cfg.Store.UpdateVM(e.ctx, vm)
	e.log.Info("a suspend did not finish: the VM goes on running", "vm", vm.Name)
}

// Resume restores a suspended VM from its directory, with its processes
// running, and waits until it is ready. A VM whose restore fails stays
// suspended.
func (e *Engine) Resume(nameOrID string, pr Progress) (*store.VM, error) {
	vm, inst, unlock, err := e.lockInstance(e.ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer func() { unlock() }()
	if inst != nil && vm.State == StateRunning {
		return vm, nil
	}
	if inst != nil || vm.State != StateSuspended {
		return nil, invalid("VM %s is %s, not suspended: start a stopped VM with 'banger vm start %s'", vm.Name, vm.State, vm.Name)
	}
	return e.resume(vm, &unlock, pr)
}

// resume restores suspended vm, whose lock (*unlock) the caller holds.
func (e *Engine) resume(vm *store.VM, unlock *func(), pr Progress) (*store.VM, error) {
	ctx := e.ctx
	dir := filepath.Join(vm.Dir, suspendDir)
	if !suspended(vm) {
		return nil, fmt.Errorf("VM %s is suspended but its saved memory is gone: 'banger vm stop %s' marks it stopped, then 'banger vm start %s' boots it cold", vm.Name, vm.Name, vm.Name)
	}
	b, be, err := e.bootBackend(vm)
	if err != nil {
		return nil, err
	}
	if err := e.cfg.Requirements(ctx, bootOps(vm)...); err != nil {
		return nil, unavailable(err)
	}
	st := newStages(pr)
	inst, bs, err := e.boot(ctx, vm, b, be, st, bootMode{kind: restoreSame, snapshot: dir})
	if err != nil {
		vm.State, vm.PID = StateSuspended, 0
		e.cfg.Store.UpdateVM(context.WithoutCancel(ctx), vm)
		return nil, fmt.Errorf("resuming %s: %w\n(it stays suspended; 'banger vm stop %s' discards its saved memory, then 'banger vm start %s' boots it cold)", vm.Name, err, vm.Name, vm.Name)
	}
	// The restored hypervisor has read the snapshot: it is no longer needed.
	if err := os.RemoveAll(dir); err != nil {
		e.log.Warn("removing a resumed VM's snapshot", "vm", vm.Name, "err", err)
	}
	if _, err := e.finishBoot(ctx, vm, b, inst, st, unlock, bs); err != nil {
		return nil, err
	}
	return vm, nil
}

// ForkPlan is a validated fork.
type ForkPlan struct {
	src  *store.VM
	plan *Plan
}

// PlanFork validates a fork of running VM src into a new VM name: bad
// input is refused before anything changes.
func (e *Engine) PlanFork(ctx context.Context, src, name string) (*ForkPlan, error) {
	if err := ValidateName(name); err != nil {
		return nil, invalid("%w", err)
	}
	if vm, err := e.byName(ctx, name); err == nil {
		return nil, exists("a VM named %s already exists (%s): pick another name, or remove it with 'banger vm delete %s'", name, vm.State, name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	sv, err := e.Get(ctx, src)
	if err != nil {
		return nil, err
	}
	if sv.State != StateRunning {
		return nil, invalid("VM %s is %s: only a running VM can be forked (start it with 'banger vm start %s')", sv.Name, sv.State, sv.Name)
	}
	if len(sv.Mounts) > 0 {
		return nil, invalid("VM %s has host folders, and QEMU cannot snapshot their virtio-fs devices: it cannot be forked; create a VM with the same --mount flags instead", sv.Name)
	}
	b, be, err := e.bootBackend(sv)
	if err != nil {
		return nil, err
	}
	if _, ok := be.(hypervisor.Restorer); !ok {
		return nil, invalid("the %s backend cannot snapshot and restore VMs: VM %s cannot be forked", be.Name(), sv.Name)
	}
	if err := e.cfg.Requirements(ctx, bootOps(sv)...); err != nil {
		return nil, unavailable(err)
	}
	img := &Image{Name: sv.Image}
	if i, err := e.cfg.Images.Resolve(ctx, b, sv.Image); err == nil {
		img = i
	}
	p := &Plan{Options: CreateOptions{Name: name, Image: sv.Image, VCPUs: sv.VCPUs, MemoryMiB: sv.MemoryMiB, NAT: sv.NAT},
		Bundle: b, Image: img, backend: be, diskSize: sv.DiskSizeBytes, workSize: sv.WorkSizeBytes, diskFormat: sv.DiskFormat, fork: sv}
	return &ForkPlan{src: sv, plan: p}, nil
}

// Fork copies a running VM into a new one: its disks, and its memory and
// devices through a snapshot, so the copy runs what the source ran; then
// the copy gets its own identity. The source is paused for the snapshot
// and the disk copy, and goes on running.
func (e *Engine) Fork(fp *ForkPlan, pr Progress) (*store.VM, error) {
	ctx := e.ctx
	p := fp.plan
	name := p.Options.Name
	unlock := e.locks.lock(name)
	defer func() { unlock() }()
	if vm, err := e.byName(ctx, name); err == nil {
		return nil, exists("a VM named %s already exists (%s): pick another name", name, vm.State)
	}
	st := newStages(pr)
	id := newID()
	dataDir, rtDir := e.vmDirs(id)
	vm := &store.VM{ID: id, Name: name, Image: p.Image.Name, State: StateCreating, Hypervisor: p.backend.Name(),
		VCPUs: p.Options.VCPUs, MemoryMiB: p.Options.MemoryMiB, DiskSizeBytes: p.diskSize, WorkSizeBytes: p.workSize,
		// The copy keeps what the source is held to (its egress policy)
		// and what it boots (its image's own kernel); not its published
		// ports, which are the source's host ports.
		NAT: p.Options.NAT, Egress: fp.src.Egress, Kernel: fp.src.Kernel, Initrd: fp.src.Initrd,
		Dir: dataDir, RuntimeDir: rtDir, DiskFormat: p.diskFormat}
	net := e.cfg.Network
	if err := e.cfg.Store.CreateVMWithLease(ctx, vm, net.GuestSubnet(), net.Gateway()); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, exists("a VM named %s already exists: pick another name", name)
		}
		return nil, fmt.Errorf("recording VM %s: %w", name, err)
	}
	vm.MAC = macOf(vm.IP)
	undo := func() {
		uctx := context.WithoutCancel(ctx)
		if err := errors.Join(e.caps.release(uctx, vm), e.caps.destroy(uctx, vm)); err != nil {
			e.log.Warn("undoing a failed fork", "vm", name, "err", err)
		}
		os.RemoveAll(rtDir)
		e.cfg.Store.DeleteVM(uctx, vm.ID)
	}
	snap := filepath.Join(dataDir, ".fork-snapshot")
	if err := e.copyRunning(ctx, fp.src, vm, p, snap, st); err != nil {
		undo()
		return nil, err
	}
	inst, bs, err := e.boot(ctx, vm, p.Bundle, p.backend, st, bootMode{kind: restoreNew, snapshot: snap})
	if err != nil {
		undo()
		return nil, err
	}
	os.RemoveAll(snap) // read by the restore
	if _, err := e.finishBoot(ctx, vm, p.Bundle, inst, st, &unlock, bs); err != nil {
		return nil, err
	}
	e.log.Info("forked VM", "vm", name, "from", fp.src.Name)
	return vm, nil
}

// copyRunning snapshots running VM src into snap and copies its disks for
// vm (the Create hooks, with p.fork), while src is paused; src then goes
// on, whatever happened.
func (e *Engine) copyRunning(ctx context.Context, src, vm *store.VM, p *Plan, snap string, st *stages) error {
	sv, inst, unlock, err := e.lockInstance(ctx, src.ID)
	if err != nil {
		return err
	}
	defer unlock()
	if inst == nil || sv.State != StateRunning {
		return invalid("VM %s is %s: only a running VM can be forked", sv.Name, sv.State)
	}
	pa, sn, err := snapshotter(p.backend, inst)
	if err != nil {
		return err
	}
	h, err := (&agent.Client{Dial: inst.DialAgent}).Health(ctx)
	if err != nil {
		return fmt.Errorf("forking %s: its agent does not answer: %w", sv.Name, err)
	}
	if !h.Answers(agent.OpIdentity) {
		return invalid("VM %s's guest agent is older than this banger and cannot give a copy its own identity: rebuild its image to fork its VMs", sv.Name)
	}
	p.fork = sv
	if err := os.MkdirAll(snap, 0o700); err != nil {
		return err
	}
	if err := pa.Pause(ctx); err != nil {
		return fmt.Errorf("forking %s: pausing it: %w", sv.Name, err)
	}
	defer func() {
		if err := pa.Resume(context.WithoutCancel(ctx)); err != nil {
			e.log.Error("resuming the source of a fork", "vm", sv.Name, "err", err)
		}
	}()
	if err := st.run("snapshotting "+sv.Name, func() error { return sn.Snapshot(ctx, snap) }); err != nil {
		return fmt.Errorf("forking %s: %w", sv.Name, err)
	}
	err = st.run("preparing disks", func() error { return e.caps.create(ctx, vm, p) })
	if err == nil {
		err = e.cfg.Store.UpdateVM(ctx, vm)
	}
	return err
}
