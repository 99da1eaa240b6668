package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
)

// bootOps are the doctor operations a boot or release of vm needs.
func bootOps(vm *store.VM) []string {
	ops := []string{doctor.OpCreate}
	if vm.NAT {
		ops = append(ops, doctor.OpNAT)
	}
	return ops
}

// Start boots a stopped VM and waits until it is ready.
func (e *Engine) Start(nameOrID string, pr Progress) (*store.VM, error) {
	ctx := e.ctx
	vm, inst, unlock, err := e.lockInstance(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer func() { unlock() }()
	if inst != nil {
		if vm.State == StateRunning {
			return vm, nil
		}
		return nil, invalid("VM %s is %s and its hypervisor (pid %d) still runs: stop it first with 'banger vm stop %s'", vm.Name, vm.State, inst.PID(), vm.Name)
	}
	if vm.State == StateSuspended {
		return e.resume(vm, &unlock, pr)
	}
	if vm.State != StateStopped && vm.State != StateError {
		return nil, invalid("VM %s is %s: wait for it to finish, or delete it", vm.Name, vm.State)
	}
	b, be, err := e.bootBackend(vm)
	if err != nil {
		return nil, err
	}
	ops := bootOps(vm)
	if len(vm.Mounts) > 0 {
		ops = append(ops, doctor.OpMounts)
	}
	if err := e.cfg.Requirements(ctx, ops...); err != nil {
		return nil, unavailable(err)
	}
	st := newStages(pr)
	inst, bs, err := e.boot(ctx, vm, b, be, st, bootMode{kind: coldBoot})
	if err != nil {
		return nil, err
	}
	if _, err := e.finishBoot(ctx, vm, b, inst, st, &unlock, bs); err != nil {
		if errors.Is(err, context.Canceled) {
			e.log.Warn("start interrupted", "vm", vm.Name, "err", err)
		} else {
			e.log.Error("start failed", "vm", vm.Name, "err", err)
		}
		return nil, err
	}
	return vm, nil
}

// Stop shuts a VM down gracefully, keeping its disks.
func (e *Engine) Stop(nameOrID string) (*store.VM, error) {
	ctx := e.ctx
	vm, inst, unlock, err := e.lockInstance(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if inst == nil && vm.State == StateStopped {
		return vm, nil
	}
	if inst == nil && vm.State == StateSuspended {
		// Like a power cut: the saved memory goes, the disks stay, and the
		// next start boots cold (ext4 replays its journal).
		if err := os.RemoveAll(filepath.Join(vm.Dir, suspendDir)); err != nil {
			return nil, fmt.Errorf("discarding the saved memory of %s: %w", vm.Name, err)
		}
		e.log.Info("stopped a suspended VM: its saved memory is discarded", "vm", vm.Name)
		vm.State = StateStopped
		return vm, e.cfg.Store.UpdateVM(ctx, vm)
	}
	// Releasing the VM's TAP device and rules needs them: refuse before
	// the guest is stopped, not halfway.
	if err := e.cfg.Requirements(ctx, bootOps(vm)...); err != nil {
		return nil, unavailable(err)
	}
	e.cancelBoot(vm.ID)
	if inst != nil {
		vm.State = StateStopping
		e.cfg.Store.UpdateVM(ctx, vm)
		e.shutdownGuest(ctx, vm, inst)
		if !inst.Exited() {
			return nil, fmt.Errorf("stopping %s: its hypervisor (pid %d) did not exit: kill it, then run 'banger vm stop %s' again", vm.Name, inst.PID(), vm.Name)
		}
	}
	if err := e.caps.release(ctx, vm); err != nil {
		e.log.Warn("releasing host resources", "vm", vm.Name, "err", err)
	}
	vm.State = StateStopped
	vm.PID = 0
	return vm, e.cfg.Store.UpdateVM(ctx, vm)
}

// shutdownGuest asks the guest agent to power off, then the hypervisor,
// then kills the process.
func (e *Engine) shutdownGuest(ctx context.Context, vm *store.VM, inst hypervisor.Instance) {
	if r, ok := inst.(interface{ MarkRequested() }); ok {
		r.MarkRequested() // the guest's reboot that follows is ours
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := (&agent.Client{Dial: inst.DialAgent}).Shutdown(actx)
	cancel()
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = inst.Wait(wctx)
		cancel()
		if err == nil && inst.Exited() {
			return
		}
	}
	e.log.Info("guest did not power off through the agent; asking the hypervisor", "vm", vm.Name, "err", err)
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = inst.Shutdown(sctx)
	cancel()
	if err == nil && inst.Exited() {
		return
	}
	e.log.Warn("guest did not power off; killing the hypervisor", "vm", vm.Name, "err", err)
	if err := inst.Kill(); err != nil {
		e.log.Error("killing hypervisor", "vm", vm.Name, "err", err)
	}
}

// Delete kills a VM if needed and deletes its disks, device and record.
func (e *Engine) Delete(nameOrID string) error {
	ctx := e.ctx
	vm, inst, unlock, err := e.lockInstance(ctx, nameOrID)
	if err != nil {
		return err
	}
	defer unlock()
	if err := e.cfg.Requirements(ctx, bootOps(vm)...); err != nil {
		return unavailable(err)
	}
	e.cancelBoot(vm.ID)
	if inst != nil {
		if err := inst.Kill(); err != nil || !inst.Exited() {
			return fmt.Errorf("stopping VM %s: its hypervisor (pid %d) did not exit: %w (kill it, then retry)", vm.Name, inst.PID(), err)
		}
	}
	if err := e.caps.release(ctx, vm); err != nil {
		return err
	}
	if err := removeRuntime(vm); err != nil {
		return err
	}
	if err := e.caps.destroy(ctx, vm); err != nil {
		if _, serr := os.Stat(vm.Dir); serr == nil {
			return err // its disks remain: keep the record so a retry finishes
		}
		e.log.Warn("removing VM: something beside its disks was left", "vm", vm.Name, "err", err)
	}
	e.mu.Lock()
	delete(e.instances, vm.ID)
	e.mu.Unlock()
	if err := e.cfg.Store.DeleteVM(ctx, vm.ID); err != nil {
		return err
	}
	// What only this VM's disks read from (an old snapshot's disks, a
	// base) goes with it.
	if err := e.collect(ctx, false); err != nil {
		e.log.Warn("removing unused templates and bases", "err", err)
	}
	return nil
}

// SetOptions change a VM's settings; nil or zero fields stay as they are.
type SetOptions struct {
	NAT *bool
	// Egress replaces the VM's egress policy. A policy other than open is
	// for outbound traffic, so it turns NAT on.
	Egress *egress.Policy
	// WorkSize grows a stopped VM's /root disk to this many bytes,
	// keeping its files; it never shrinks.
	WorkSize int64
}

// Set changes a VM's settings: NAT and egress at once when the VM runs,
// the /root disk only while it is stopped. Every setting is checked before
// any changes, so a refusal changes nothing; a running VM whose change
// fails keeps its old settings on record.
func (e *Engine) Set(nameOrID string, o SetOptions) (*store.VM, error) {
	ctx := e.ctx
	vm, unlock, err := e.lockVM(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	next := *vm
	if o.Egress != nil {
		if err := SetPolicy(&next, *o.Egress); err != nil {
			return nil, err
		}
		if o.Egress.Effective() != egress.ModeOpen && o.NAT == nil {
			next.NAT = true
		}
	}
	if o.NAT != nil {
		next.NAT = *o.NAT
	}
	netChange := next.NAT != vm.NAT || next.Egress != vm.Egress
	grow := false
	if o.WorkSize != 0 {
		if grow, err = e.checkGrowWork(ctx, vm, o.WorkSize); err != nil {
			return nil, err
		}
	}
	if !netChange && !grow {
		return vm, nil
	}
	running := vm.State == StateRunning || vm.State == StateStarting
	var ops []string
	if netChange && (next.NAT || running) {
		ops = append(ops, doctor.OpNAT)
	}
	if grow {
		ops = append(ops, doctor.OpDiskSize)
	}
	if len(ops) > 0 {
		if err := e.cfg.Requirements(ctx, ops...); err != nil {
			return nil, unavailable(err)
		}
	}
	if grow {
		if err := growDisk(ctx, e.cfg.Runner, WorkDisk(vm), vm.DiskFormat, o.WorkSize); err != nil {
			return nil, fmt.Errorf("growing /root of %s to %s: %w", vm.Name, units.FormatSize(o.WorkSize), err)
		}
		e.log.Info("grew /root", "vm", vm.Name, "from", units.FormatSize(vm.WorkSizeBytes), "to", units.FormatSize(o.WorkSize))
		next.WorkSizeBytes = o.WorkSize
	}
	if netChange && running {
		if err := e.caps.update(ctx, &next); err != nil {
			// Put the running VM's rules back as they were on record.
			if rerr := e.caps.update(context.WithoutCancel(ctx), vm); rerr != nil {
				e.log.Warn("restoring a VM's settings after a failed change", "vm", vm.Name, "err", rerr)
			}
			return nil, err
		}
	}
	return &next, e.cfg.Store.UpdateVM(ctx, &next)
}

// EgressStats is what a VM's egress policy refused; egress.ErrNoPolicy
// when none is in force (no NAT, open, not running).
func (e *Engine) EgressStats(ctx context.Context, vm *store.VM) (egress.Stats, error) {
	for _, c := range e.caps {
		if ec, ok := c.(*egressCap); ok {
			return ec.Stats(ctx, vm)
		}
	}
	return egress.Stats{}, egress.ErrNoPolicy
}

// checkGrowWork refuses to grow the /root disk of a VM that is not
// stopped (its hypervisor has the disk open) or to shrink it; it reports
// whether size is more than the disk has now.
func (e *Engine) checkGrowWork(ctx context.Context, vm *store.VM, size int64) (bool, error) {
	if vm.State != StateStopped && vm.State != StateError {
		return false, invalid("VM %s is %s: /root grows only while the VM is stopped: stop it with 'banger vm stop %s', then run this again", vm.Name, vm.State, vm.Name)
	}
	inst, err := e.instance(ctx, vm)
	if err != nil {
		return false, err
	}
	if inst != nil {
		return false, invalid("VM %s is %s but its hypervisor (pid %d) still runs: stop it with 'banger vm stop %s', then run this again", vm.Name, vm.State, inst.PID(), vm.Name)
	}
	cur, err := disk.Size(WorkDisk(vm))
	if err != nil {
		return false, fmt.Errorf("VM %s: its /root disk: %w", vm.Name, err)
	}
	if vm.DiskFormat == string(hypervisor.DiskQcow2) {
		cur = vm.WorkSizeBytes // the overlay's file is not its disk's size
	}
	if size < cur {
		return false, invalid("work size %s is smaller than the /root of %s (%s): /root only grows: pick --work-size %s or more",
			units.FormatSize(size), vm.Name, units.FormatSize(cur), units.RoundUp(cur))
	}
	if size > MaxWorkSize {
		return false, invalid("work size %s is more than banger allows (%s): pick a smaller --work-size", units.FormatSize(size), units.FormatSize(MaxWorkSize))
	}
	return size > cur, nil
}

// watch marks a VM stopped (or, after a crash, in error) when its
// hypervisor exits on its own (guest poweroff, crash). A stop or delete
// holds the VM's lock while the process exits and clears its pid (or its
// record) before releasing it, so the watcher then finds nothing to do.
func (e *Engine) watch(id, name string, inst hypervisor.Instance) {
	e.Go(func() {
		inst.Wait(e.ctx)
		if e.ctx.Err() != nil {
			return
		}
		unlock := e.locks.lock(name)
		defer unlock()
		e.mu.Lock()
		if e.instances[id] == inst {
			delete(e.instances, id)
		}
		e.mu.Unlock()
		vm, err := e.cfg.Store.GetVM(e.ctx, id)
		if err != nil || vm.PID != inst.PID() {
			return
		}
		// A VM still starting is the boot path's to settle (finishBoot).
		if vm.State != StateRunning && vm.State != StateStopping {
			return
		}
		exit := inst.Exit()
		e.caps.release(e.ctx, vm)
		vm.PID = 0
		if exit.Crashed() {
			e.log.Error("hypervisor died", "vm", name, "pid", inst.PID(), "how", exit.String())
			vm.State = StateError
			vm.Error = "its hypervisor died: " + exit.String() + " (start it again with 'banger vm start " + name + "'; its console log may say why: 'banger vm logs " + name + "')"
		} else {
			e.log.Warn("hypervisor exited on its own; marking VM stopped", "vm", name, "pid", inst.PID(), "how", exit.String())
			vm.State = StateStopped
		}
		e.cfg.Store.UpdateVM(e.ctx, vm)
	})
}

// consoleCheck is how often a running VM's console log is held to its cap:
// a guest writing its serial console flat out (about 450 KiB/s under TCG)
// gets a quarter second of output past it.
const consoleCheck = 250 * time.Millisecond

// capConsole rotates a running VM's console log whenever it passes the
// cap, until its hypervisor ends or the engine closes.
func (e *Engine) capConsole(name, path string, inst hypervisor.Instance) {
	t := time.NewTicker(consoleCheck)
	defer t.Stop()
	warned := false
	for {
		if _, err := logfile.Rotate(path, e.cfg.ConsoleLogMax); err != nil && !warned {
			e.log.Warn("cannot hold the console log to its cap", "vm", name, "err", err)
			warned = true
		}
		if inst.Exited() {
			return
		}
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Adopt takes over the hypervisors that survived a daemon restart and marks
// the VMs of the others stopped, keeping their disks; then every capability
// reconciles the host (Reconcile).
func (e *Engine) Adopt(ctx context.Context) error {
	vms, err := e.cfg.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i := range vms {
		vm := &vms[i]
		if vm.WorkSizeBytes == 0 && vm.DiskFormat != string(hypervisor.DiskQcow2) {
			// Recorded before banger kept /root's size.
			if n, err := disk.Size(WorkDisk(vm)); err == nil {
				vm.WorkSizeBytes = n
				if err := e.cfg.Store.UpdateVM(ctx, vm); err != nil {
					return err
				}
			}
		}
		if vm.State == StateStopped || vm.State == StateSuspended || (vm.State == StateError && vm.PID == 0) {
			continue
		}
		be, ok := e.backend(vm.Hypervisor, nil)
		var inst hypervisor.Instance
		err = nil
		if ok && vm.PID != 0 {
			inst, err = be.Attach(ctx, e.spec(vm))
		}
		if err != nil && !errors.Is(err, hypervisor.ErrNotRunning) {
			// A process may still run: keep the record and its device.
			e.log.Warn("cannot adopt VM's hypervisor; leaving it as it is", "vm", vm.Name, "pid", vm.PID, "err", err)
			continue
		}
		if inst != nil && err == nil {
			e.log.Info("adopted running VM", "vm", vm.Name, "pid", inst.PID())
			e.track(vm, inst)
			name := vm.Name
			switch vm.State {
			case StateStopping, StateError:
				// The previous daemon died mid-stop or mid-failure: finish it.
				e.Go(func() { e.Stop(name) })
			case StateCreating, StateStarting:
				e.Go(func() { e.resumeReadiness(name) })
			case StateSuspending:
				e.Go(func() { e.finishSuspend(name) })
			}
			continue
		}
		e.log.Info("VM's hypervisor is gone; marking it stopped", "vm", vm.Name, "state", vm.State)
		if err := e.caps.release(ctx, vm); err != nil {
			e.log.Warn("releasing host resources of a stopped VM", "vm", vm.Name, "err", err)
		}
		switch {
		case vm.State == StateCreating:
			vm.State = StateError
			vm.Error = "bangerd stopped while this VM was being created"
		case vm.State == StateError:
		case vm.State == StateSuspending && suspended(vm):
			// The daemon died after the snapshot, as the hypervisor ended.
			vm.State = StateSuspended
		default:
			vm.State = StateStopped
		}
		vm.PID = 0
		if err := e.cfg.Store.UpdateVM(ctx, vm); err != nil {
			return err
		}
	}
	return nil
}

// Reconcile runs every capability's Reconcile hook with the VMs on record,
// after Adopt: the host is made to hold exactly what they need.
func (e *Engine) Reconcile(ctx context.Context) error {
	vms, err := e.cfg.Store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("listing VMs to reconcile the host: %w", err)
	}
	return errors.Join(e.reapTemplateVMs(ctx), e.caps.reconcile(ctx, vms), e.collect(ctx, true))
}

// resumeReadiness finishes the readiness checks of a VM whose create or start
// was interrupted by a daemon restart.
func (e *Engine) resumeReadiness(name string) {
	vm, unlock, err := e.lockVM(e.ctx, name)
	if err != nil {
		return
	}
	defer func() { unlock() }()
	inst, err := e.instance(e.ctx, vm)
	if err != nil {
		return // a process may run that cannot be controlled: leave it be
	}
	if inst == nil {
		e.caps.release(e.ctx, vm)
		vm.State, vm.PID = StateStopped, 0
		e.cfg.Store.UpdateVM(e.ctx, vm)
		return
	}
	b, err := e.Bundle()
	if err != nil {
		e.failBoot(vm, inst, err)
		return
	}
	if vm.State != StateStarting {
		vm.State = StateStarting
		e.cfg.Store.UpdateVM(e.ctx, vm)
	}
	// A guest restored from another machine's snapshot that may not have
	// its own identity yet gets it now, its TAP device held down until then.
	bs := pendingBoot(vm)
	if bs.kind == restoreNew {
		if err := e.caps.restoring(e.ctx, vm); err != nil {
			e.failBoot(vm, inst, err)
			return
		}
	}
	if _, err := e.finishBoot(e.ctx, vm, b, inst, newStages(nil), &unlock, bs); err != nil {
		e.log.Warn("resuming readiness", "vm", vm.Name, "err", err)
	}
}
