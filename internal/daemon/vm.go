package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
)

// VM states.
const (
	StateCreating = "creating"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateError    = "error"
)

// createPlan is a validated create request: everything that can be refused
// is refused before anything is changed.
type createPlan struct {
	req      rpc.CreateRequest
	bundle   *bundle.Bundle
	image    *image
	backend  hypervisor.Backend
	diskSize int64
}

func (d *Daemon) planCreate(ctx context.Context, req rpc.CreateRequest) (*createPlan, error) {
	if err := ValidateName(req.Name); err != nil {
		return nil, invalid("%w", err)
	}
	if vm, err := d.vmByName(ctx, req.Name); err == nil {
		return nil, exists("a VM named %s already exists (%s): pick another name, or remove it with 'banger vm delete %s'", req.Name, vm.State, req.Name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	b, err := d.loadBundle()
	if err != nil {
		return nil, unavailable(err)
	}
	if req.Image == "" {
		req.Image = d.cfg.DefaultImage
	}
	if req.Image == "" {
		req.Image = b.DefaultImage
	}
	img, err := d.resolveImage(ctx, b, req.Image)
	if err != nil {
		return nil, invalid("%w", err)
	}
	if req.VCPUs == 0 {
		req.VCPUs = d.cfg.VCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = d.cfg.MemoryMiB
	}
	be, err := d.pickBackend(b)
	if err != nil {
		return nil, unavailable(err)
	}
	// The same tool checks 'banger doctor' reports, so the two never disagree.
	ops := []string{doctor.OpCreate}
	if be.Name() == "qemu" {
		ops = append(ops, doctor.OpQEMU)
	}
	if req.DiskSize != "" {
		ops = append(ops, doctor.OpDiskSize)
	}
	if req.NAT {
		ops = append(ops, doctor.OpNAT)
	}
	if seedStale(img, b) {
		ops = append(ops, doctor.OpWorkSeed)
	}
	if err := doctor.Require(ctx, d.r, ops...); err != nil {
		return nil, unavailable(err)
	}
	if err := doctor.RequireTUN(); err != nil {
		return nil, unavailable(err)
	}
	if err := ValidateShape(req.VCPUs, req.MemoryMiB, be.Name()); err != nil {
		return nil, invalid("%w", err)
	}
	imgSize, err := disk.Size(img.Rootfs)
	if err != nil {
		return nil, unavailable(fmt.Errorf("image %s: %w (rebuild the bundle with 'make runtime-bundle')", img.Name, err))
	}
	p := &createPlan{req: req, bundle: b, image: img, backend: be, diskSize: imgSize}
	if req.DiskSize != "" {
		size, err := units.ParseSize(req.DiskSize)
		if err != nil {
			return nil, invalid("invalid --disk-size %q: %w", req.DiskSize, err)
		}
		if size < imgSize {
			return nil, invalid("disk size %s is smaller than image %s (%s): pick --disk-size %s or more", req.DiskSize, img.Name, units.FormatSize(imgSize), units.FormatSize(imgSize))
		}
		p.diskSize = size
	}
	return p, nil
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *Daemon) vmDirs(id string) (data, rt string) {
	return filepath.Join(d.paths.DataDir, "vms", id), filepath.Join(d.paths.RuntimeDir, "vms", id)
}

// create runs a planned create under the daemon's lifetime.
func (d *Daemon) create(p *createPlan, pr *progress) (*store.VM, error) {
	ctx := d.ctx
	id := newID()
	dataDir, rtDir := d.vmDirs(id)
	vm := &store.VM{
		ID:            id,
		Name:          p.req.Name,
		Image:         p.image.Name,
		State:         StateCreating,
		Hypervisor:    p.backend.Name(),
		VCPUs:         p.req.VCPUs,
		MemoryMiB:     p.req.MemoryMiB,
		DiskSizeBytes: p.diskSize,
		TAP:           d.names.TAPName(id),
		NAT:           p.req.NAT,
		Dir:           dataDir,
		RuntimeDir:    rtDir,
	}
	if err := d.store.CreateVMWithLease(ctx, vm, d.net.Subnet, d.net.Gateway()); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, exists("a VM named %s already exists: pick another name", vm.Name)
		}
		return nil, fmt.Errorf("recording VM %s: %w", vm.Name, err)
	}
	ip, _ := netip.ParseAddr(vm.IP)
	vm.MAC = network.MAC(ip)

	// Until the hypervisor runs, a failure undoes everything.
	undo := func() {
		uctx := context.WithoutCancel(ctx)
		if err := errors.Join(d.release(uctx, vm), d.caps.destroy(uctx, vm)); err != nil {
			d.log.Warn("undoing a failed create", "vm", vm.Name, "err", err)
		}
		os.RemoveAll(rtDir)
		d.store.DeleteVM(uctx, vm.ID)
	}
	err := pr.run("preparing disks", func() error {
		return d.caps.create(ctx, vm, p)
	})
	if err == nil {
		err = d.store.UpdateVM(ctx, vm)
	}
	if err != nil {
		undo()
		return nil, err
	}
	if err := d.boot(ctx, vm, p.bundle, p.backend, pr, p.req.NoWait); err != nil {
		// A VM whose readiness checks failed is kept in the error state
		// with its disks (failBoot), as the error tells the user.
		if vm.PID == 0 && vm.State != StateError {
			undo()
		}
		return nil, err
	}
	return vm, nil
}

// bootOps are the doctor operations a boot or release of vm needs.
func (d *Daemon) bootOps(vm *store.VM) []string {
	ops := []string{doctor.OpCreate}
	if vm.NAT {
		ops = append(ops, doctor.OpNAT)
	}
	return ops
}

// spec builds the hypervisor spec of vm, less what booting adds (kernel,
// initrd, command line): that is enough to adopt a running hypervisor.
func (d *Daemon) spec(vm *store.VM) hypervisor.Spec {
	s := hypervisor.Spec{
		ID:         vm.ID,
		Dir:        vm.RuntimeDir,
		VCPUs:      vm.VCPUs,
		MemoryMiB:  vm.MemoryMiB,
		ConsoleLog: filepath.Join(vm.Dir, "console.log"),
		AgentCID:   vm.CID,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: filepath.Join(vm.Dir, "rootfs.ext4"), Root: true},
			{ID: "work", Path: filepath.Join(vm.Dir, "work.ext4")},
		},
		NICs: []hypervisor.NIC{{ID: "eth0", TAP: vm.TAP, MAC: vm.MAC}},
	}
	return s
}

// boot brings up vm's network device and hypervisor and waits for the guest.
// On return with vm.PID != 0 the hypervisor was started; a readiness failure
// then leaves the VM in the error state with its disks.
func (d *Daemon) boot(ctx context.Context, vm *store.VM, b *bundle.Bundle, be hypervisor.Backend, pr *progress, noWait bool) error {
	// The capabilities fill in the guest's configuration as they ready the
	// host for it (TAP device and address, resolver, NAT); the hypervisor
	// spec is built after them, since they change the VM (its TAP device).
	g := guestconfig.Config{BaseArgs: b.BootArgs, Root: "/dev/vda"}
	var cmdline string
	err := pr.run("network", func() error {
		if err := d.caps.prepare(ctx, vm, &g); err != nil {
			return err
		}
		var err error
		cmdline, err = g.Cmdline()
		return err
	})
	if err != nil {
		// The cause is in err; what releasing fails on (often the same
		// cause) goes to the log, not to the user a second time.
		if rerr := d.release(context.WithoutCancel(ctx), vm); rerr != nil {
			d.log.Warn("releasing after a failed boot", "vm", vm.Name, "err", rerr)
		}
		return err
	}
	if err := os.MkdirAll(vm.RuntimeDir, 0o700); err != nil {
		d.release(context.WithoutCancel(ctx), vm)
		return fmt.Errorf("creating %s: %w", vm.RuntimeDir, err)
	}
	var inst hypervisor.Instance
	err = pr.run("booting "+be.Name(), func() error {
		var err error
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		spec := d.spec(vm)
		spec.Kernel, spec.Initrd, spec.Cmdline = b.Path(b.Kernel), b.Path(b.Initrd), cmdline
		// A hypervisor running as root would create a missing TAP itself,
		// off the bridge, and the guest would never answer.
		for _, nic := range spec.NICs {
			if _, err := net.InterfaceByName(nic.TAP); err != nil {
				return fmt.Errorf("booting %s: its TAP device %s is missing: %w", vm.Name, nic.TAP, err)
			}
		}
		inst, err = be.Start(sctx, spec)
		return err
	})
	if err != nil {
		d.release(context.WithoutCancel(ctx), vm)
		return err
	}
	vm.PID = inst.PID()
	vm.State = StateStarting
	vm.Hypervisor = be.Name()
	vm.Error = ""
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		// Without its pid on record a restarted daemon could not adopt it.
		inst.Kill()
		d.release(context.WithoutCancel(ctx), vm)
		vm.PID = 0
		return fmt.Errorf("recording the hypervisor of %s: %w", vm.Name, err)
	}
	d.mu.Lock()
	d.instances[vm.ID] = inst
	d.mu.Unlock()
	d.watch(vm.ID, vm.Name, inst)

	if noWait {
		pr.finish(d.view(ctx, vm), nil)
	}
	return d.finishBoot(ctx, vm, b, inst, pr)
}

// finishBoot runs the readiness checks of a started VM and records the
// outcome. The VM's name lock is held on entry and on return but released
// during the wait, so a stop or delete of a VM that boots slowly is not
// stuck behind it: they cancel the wait instead.
func (d *Daemon) finishBoot(ctx context.Context, vm *store.VM, b *bundle.Bundle, inst hypervisor.Instance, pr *progress) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	d.booting[vm.ID] = cancel
	d.mu.Unlock()
	lock := d.vmLock(vm.Name)
	lock.Unlock()
	err := d.waitReady(rctx, vm, b, inst, pr)
	lock.Lock()
	d.mu.Lock()
	delete(d.booting, vm.ID)
	d.mu.Unlock()

	if d.ctx.Err() != nil {
		// bangerd is shutting down: the VM keeps booting, and the next
		// daemon finishes its readiness checks.
		return fmt.Errorf("bangerd stopped while %s was booting: %w", vm.Name, d.ctx.Err())
	}
	cur, gerr := d.store.GetVM(ctx, vm.ID)
	if gerr != nil || cur.PID != vm.PID || cur.State != StateStarting {
		return fmt.Errorf("%s was stopped or deleted while it booted", vm.Name)
	}
	if err != nil {
		return d.failBoot(vm, inst, err)
	}
	vm.State = StateRunning
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return err
	}
	for _, s := range pr.stages() {
		d.store.RecordStage(ctx, vm.ID, s.Name, time.Duration(s.DurationMS*float64(time.Millisecond)))
	}
	return nil
}

// cancelBoot ends the readiness wait of vm, if one runs.
func (d *Daemon) cancelBoot(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cancel := d.booting[id]; cancel != nil {
		cancel()
	}
}

// failBoot ends a VM whose readiness checks failed: its hypervisor is
// killed, its network released, and it is kept in the error state with its
// disks.
func (d *Daemon) failBoot(vm *store.VM, inst hypervisor.Instance, err error) error {
	inst.Kill()
	d.release(context.Background(), vm)
	vm.State = StateError
	vm.Error = err.Error()
	vm.PID = 0
	d.store.UpdateVM(context.Background(), vm)
	return fmt.Errorf("%w\n(the VM is kept in the error state: see its console with 'banger vm logs %s', remove it with 'banger vm delete %s')", err, vm.Name, vm.Name)
}

// waitReady runs the readiness checks in order: agent health over the agent
// channel (which also yields the SSH host keys to pin), then one SSH handshake
// with the bundle key.
func (d *Daemon) waitReady(ctx context.Context, vm *store.VM, b *bundle.Bundle, inst hypervisor.Instance, pr *progress) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(d.cfg.ReadyTimeoutSeconds)*time.Second)
	defer cancel()
	var h *agent.Health
	err := pr.run("waiting for agent", func() error {
		var err error
		h, err = d.waitAgent(ctx, vm, inst)
		return err
	})
	if err != nil {
		return err
	}
	if err := d.caps.ready(ctx, vm, h); err != nil {
		return err
	}
	return pr.run("waiting for ssh", func() error {
		return d.waitSSH(ctx, vm, b, h.SSHHostKeys, inst)
	})
}

// instance returns vm's live hypervisor instance, adopting it when this
// daemon has not seen it yet, or nil when it is not running. An error means
// a process may still run but cannot be controlled: acting as if it were
// gone could put two hypervisors on one VM's disks.
func (d *Daemon) instance(ctx context.Context, vm *store.VM) (hypervisor.Instance, error) {
	d.mu.Lock()
	inst := d.instances[vm.ID]
	d.mu.Unlock()
	if inst != nil && !inst.Exited() {
		return inst, nil
	}
	be, ok := d.backend(vm.Hypervisor, nil)
	if !ok || vm.PID == 0 {
		return nil, nil
	}
	inst, err := be.Attach(ctx, d.spec(vm))
	if errors.Is(err, hypervisor.ErrNotRunning) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the hypervisor of %s (pid %d) does not answer: %w (kill it, then retry)", vm.Name, vm.PID, err)
	}
	d.mu.Lock()
	d.instances[vm.ID] = inst
	d.mu.Unlock()
	d.watch(vm.ID, vm.Name, inst)
	return inst, nil
}

// watch marks a VM stopped when its hypervisor exits on its own (guest
// poweroff, crash). A stop or delete holds the VM's lock while the process
// exits and clears its pid (or its record) before releasing it, so the
// watcher then finds nothing to do.
func (d *Daemon) watch(id, name string, inst hypervisor.Instance) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		inst.Wait(d.ctx)
		if d.ctx.Err() != nil {
			return
		}
		l := d.vmLock(name)
		l.Lock()
		defer l.Unlock()
		d.mu.Lock()
		if d.instances[id] == inst {
			delete(d.instances, id)
		}
		d.mu.Unlock()
		vm, err := d.store.GetVM(d.ctx, id)
		if err != nil || vm.PID != inst.PID() {
			return
		}
		// A VM still starting is the boot path's to settle (finishBoot).
		if vm.State == StateRunning || vm.State == StateStopping {
			exit := inst.Exit()
			d.release(d.ctx, vm)
			vm.PID = 0
			if exit.Crashed() {
				d.log.Error("hypervisor died", "vm", name, "pid", inst.PID(), "how", exit.String())
				vm.State = StateError
				vm.Error = "its hypervisor died: " + exit.String() + " (start it again with 'banger vm start " + name + "'; its console log may say why: 'banger vm logs " + name + "')"
			} else {
				d.log.Warn("hypervisor exited on its own; marking VM stopped", "vm", name, "pid", inst.PID(), "how", exit.String())
				vm.State = StateStopped
			}
			d.store.UpdateVM(d.ctx, vm)
		}
	}()
}

// start boots a stopped VM.
func (d *Daemon) start(name string, pr *progress) (*store.VM, error) {
	ctx := d.ctx
	vm, inst, unlock, err := d.lockInstance(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if inst != nil {
		if vm.State == StateRunning {
			return vm, nil
		}
		return nil, invalid("VM %s is %s and its hypervisor (pid %d) still runs: stop it first with 'banger vm stop %s'", vm.Name, vm.State, inst.PID(), vm.Name)
	}
	if vm.State != StateStopped && vm.State != StateError {
		return nil, invalid("VM %s is %s: wait for it to finish, or delete it", vm.Name, vm.State)
	}
	b, err := d.loadBundle()
	if err != nil {
		return nil, unavailable(err)
	}
	be, ok := d.backend(vm.Hypervisor, b)
	if !ok {
		return nil, fmt.Errorf("VM %s uses unknown hypervisor %q", vm.Name, vm.Hypervisor)
	}
	if err := be.Available(); err != nil {
		return nil, unavailable(fmt.Errorf("VM %s needs %s: %w", vm.Name, be.Name(), err))
	}
	if err := doctor.Require(ctx, d.r, d.bootOps(vm)...); err != nil {
		return nil, unavailable(err)
	}
	if err := d.boot(ctx, vm, b, be, pr, false); err != nil {
		return nil, err
	}
	return vm, nil
}

// stop shuts a VM down gracefully, keeping its disks.
func (d *Daemon) stop(name string) (*store.VM, error) {
	ctx := d.ctx
	vm, inst, unlock, err := d.lockInstance(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if inst == nil && vm.State == StateStopped {
		return vm, nil
	}
	// Releasing the VM's TAP device and rules needs them: refuse before
	// the guest is stopped, not halfway.
	if err := doctor.Require(ctx, d.r, d.bootOps(vm)...); err != nil {
		return nil, unavailable(err)
	}
	d.cancelBoot(vm.ID)
	if inst != nil {
		vm.State = StateStopping
		d.store.UpdateVM(ctx, vm)
		d.shutdownGuest(ctx, vm, inst)
		if !inst.Exited() {
			return nil, fmt.Errorf("stopping %s: its hypervisor (pid %d) did not exit: kill it, then run 'banger vm stop %s' again", vm.Name, inst.PID(), vm.Name)
		}
	}
	if err := d.release(ctx, vm); err != nil {
		d.log.Warn("releasing host resources", "vm", vm.Name, "err", err)
	}
	vm.State = StateStopped
	vm.PID = 0
	return vm, d.store.UpdateVM(ctx, vm)
}

// shutdownGuest asks the guest agent to power off, then the hypervisor,
// then kills the process.
func (d *Daemon) shutdownGuest(ctx context.Context, vm *store.VM, inst hypervisor.Instance) {
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
	d.log.Info("guest did not power off through the agent; asking the hypervisor", "vm", vm.Name, "err", err)
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = inst.Shutdown(sctx)
	cancel()
	if err == nil && inst.Exited() {
		return
	}
	d.log.Warn("guest did not power off; killing the hypervisor", "vm", vm.Name, "err", err)
	if err := inst.Kill(); err != nil {
		d.log.Error("killing hypervisor", "vm", vm.Name, "err", err)
	}
}

// remove kills a VM if needed and deletes its disks, device and record.
func (d *Daemon) remove(name string) error {
	ctx := d.ctx
	vm, inst, unlock, err := d.lockInstance(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if err := doctor.Require(ctx, d.r, d.bootOps(vm)...); err != nil {
		return unavailable(err)
	}
	d.cancelBoot(vm.ID)
	if inst != nil {
		if err := inst.Kill(); err != nil || !inst.Exited() {
			return fmt.Errorf("stopping VM %s: its hypervisor (pid %d) did not exit: %v (kill it, then retry)", vm.Name, inst.PID(), err)
		}
	}
	if err := d.release(ctx, vm); err != nil {
		return err
	}
	if err := os.RemoveAll(vm.RuntimeDir); err != nil {
		return fmt.Errorf("removing VM %s: %w", vm.Name, err)
	}
	if err := d.caps.destroy(ctx, vm); err != nil {
		if _, serr := os.Stat(vm.Dir); serr == nil {
			return err // its disks remain: keep the record so a retry finishes
		}
		d.log.Warn("removing VM: something beside its disks was left", "vm", vm.Name, "err", err)
	}
	d.mu.Lock()
	delete(d.instances, vm.ID)
	d.mu.Unlock()
	return d.store.DeleteVM(ctx, vm.ID)
}

func (d *Daemon) getVM(ctx context.Context, name string) (*store.VM, error) {
	vm, err := d.store.GetVM(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("no VM named %s: see 'banger vm list'", name)
	}
	if err != nil && strings.Contains(err.Error(), "ambiguous") {
		return nil, invalid("%w", err)
	}
	return vm, err
}

// lockInstance takes a VM's lock (lockVM) and finds its live hypervisor
// instance (instance); on error nothing is held.
func (d *Daemon) lockInstance(ctx context.Context, nameOrID string) (*store.VM, hypervisor.Instance, func(), error) {
	vm, unlock, err := d.lockVM(ctx, nameOrID)
	if err != nil {
		return nil, nil, nil, err
	}
	inst, err := d.instance(ctx, vm)
	if err != nil {
		unlock()
		return nil, nil, nil, err
	}
	return vm, inst, unlock, nil
}

// lockVM resolves a name or id and takes that VM's lock, keyed by its name
// (as creates are), then reads it again under the lock.
func (d *Daemon) lockVM(ctx context.Context, nameOrID string) (*store.VM, func(), error) {
	vm, err := d.getVM(ctx, nameOrID)
	if err != nil {
		return nil, nil, err
	}
	l := d.vmLock(vm.Name)
	l.Lock()
	vm, err = d.getVM(ctx, vm.ID)
	if err != nil {
		l.Unlock()
		return nil, nil, err
	}
	return vm, l.Unlock, nil
}

// vmByName finds a VM by its exact name (never by id prefix).
func (d *Daemon) vmByName(ctx context.Context, name string) (*store.VM, error) {
	vms, err := d.store.ListVMs(ctx)
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

// reconcile adopts hypervisors that survived a daemon restart and marks the
// others stopped, keeping their disks.
// The capabilities reconcile the host afterwards (setupHost).
func (d *Daemon) reconcile(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i := range vms {
		vm := &vms[i]
		if vm.State == StateStopped || (vm.State == StateError && vm.PID == 0) {
			continue
		}
		be, ok := d.backend(vm.Hypervisor, nil)
		var inst hypervisor.Instance
		err = nil
		if ok && vm.PID != 0 {
			inst, err = be.Attach(ctx, d.spec(vm))
		}
		if err != nil && !errors.Is(err, hypervisor.ErrNotRunning) {
			// A process may still run: keep the record and its device.
			d.log.Warn("cannot adopt VM's hypervisor; leaving it as it is", "vm", vm.Name, "pid", vm.PID, "err", err)
			continue
		}
		if inst != nil && err == nil {
			d.log.Info("adopted running VM", "vm", vm.Name, "pid", inst.PID())
			d.mu.Lock()
			d.instances[vm.ID] = inst
			d.mu.Unlock()
			d.watch(vm.ID, vm.Name, inst)
			switch vm.State {
			case StateStopping, StateError:
				// The previous daemon died mid-stop or mid-failure: finish it.
				d.goTracked(func() { d.stop(vm.Name) })
			case StateCreating, StateStarting:
				d.goTracked(func() { d.resumeReadiness(vm.Name) })
			}
			continue
		}
		d.log.Info("VM's hypervisor is gone; marking it stopped", "vm", vm.Name, "state", vm.State)
		if err := d.release(ctx, vm); err != nil {
			d.log.Warn("releasing host resources of a stopped VM", "vm", vm.Name, "err", err)
		}
		switch vm.State {
		case StateCreating:
			vm.State = StateError
			vm.Error = "bangerd stopped while this VM was being created"
		case StateError:
		default:
			vm.State = StateStopped
		}
		vm.PID = 0
		if err := d.store.UpdateVM(ctx, vm); err != nil {
			return err
		}
	}
	return nil
}

// goTracked runs fn in a goroutine that daemon shutdown waits for.
func (d *Daemon) goTracked(fn func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		fn()
	}()
}

// resumeReadiness finishes the readiness checks of a VM whose create or start
// was interrupted by a daemon restart.
func (d *Daemon) resumeReadiness(name string) {
	vm, unlock, err := d.lockVM(d.ctx, name)
	if err != nil {
		return
	}
	defer unlock()
	inst, err := d.instance(d.ctx, vm)
	if err != nil {
		return // a process may run that cannot be controlled: leave it be
	}
	if inst == nil {
		d.release(d.ctx, vm)
		vm.State, vm.PID = StateStopped, 0
		d.store.UpdateVM(d.ctx, vm)
		return
	}
	b, err := d.loadBundle()
	if err != nil {
		d.failBoot(vm, inst, err)
		return
	}
	if vm.State != StateStarting {
		vm.State = StateStarting
		d.store.UpdateVM(d.ctx, vm)
	}
	if err := d.finishBoot(d.ctx, vm, b, inst, newProgress(nil)); err != nil {
		d.log.Warn("resuming readiness", "vm", vm.Name, "err", err)
	}
}

// view converts a stored VM into its API form.
func (d *Daemon) view(ctx context.Context, vm *store.VM) *rpc.VM {
	v := &rpc.VM{
		ID:            vm.ID,
		Name:          vm.Name,
		Image:         vm.Image,
		State:         vm.State,
		Hypervisor:    vm.Hypervisor,
		VCPUs:         vm.VCPUs,
		MemoryMiB:     vm.MemoryMiB,
		DiskSizeBytes: vm.DiskSizeBytes,
		IP:            vm.IP,
		MAC:           vm.MAC,
		TAP:           vm.TAP,
		PID:           vm.PID,
		NAT:           vm.NAT,
		Dir:           vm.Dir,
		ConsoleLog:    filepath.Join(vm.Dir, "console.log"),
		Error:         vm.Error,
		CreatedAt:     vm.CreatedAt,
	}
	if stages, err := d.store.StageDurations(ctx, vm.ID); err == nil {
		for _, s := range stages {
			v.Stages = append(v.Stages, rpc.Stage{Name: s.Stage, DurationMS: float64(s.Duration) / float64(time.Millisecond)})
		}
	}
	return v
}
