package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/store"
)

// Capability is one host-integrated feature of a VM: its disks, its network
// device, its NAT rules, its name in DNS, its pinned host keys. The engine
// calls every capability at the same points and in the same order, so a new
// feature is a new capability, not a new branch through the engine. Embed
// NoCapability to implement only the hooks you need.
type Capability interface {
	// Name names the capability in errors and logs.
	Name() string
	// Create runs once per VM, when it is created, before its first boot.
	Create(ctx context.Context, vm *store.VM, p *Plan) error
	// Prepare runs before every boot: it readies what the hypervisor needs
	// on the host and adds to the guest's configuration.
	Prepare(ctx context.Context, vm *store.VM, g *guestconfig.Config) error
	// Restoring runs after Prepare when the hypervisor is to restore the
	// snapshot of another machine that still runs (a fork's source): until
	// the agent gives the guest its own identity, it runs with that
	// machine's address and MAC.
	Restoring(ctx context.Context, vm *store.VM) error
	// Ready runs when the guest agent first answers (after a restore, once
	// the guest has its own identity), before the SSH check.
	Ready(ctx context.Context, vm *store.VM, h *agent.Health) error
	// Release undoes Prepare once the hypervisor has ended (stop, failed
	// boot, guest poweroff, delete). It must be idempotent.
	Release(ctx context.Context, vm *store.VM) error
	// Destroy removes what outlives a stop, when the VM is deleted.
	Destroy(ctx context.Context, vm *store.VM) error
	// Reconcile runs at daemon start, after running hypervisors were
	// adopted, with every VM on record: it removes what belongs to no VM
	// and restores what running VMs need.
	Reconcile(ctx context.Context, vms []store.VM) error
}

// Updater is a capability that can apply a changed setting (vm set) to a
// running VM at once, without a reboot.
type Updater interface {
	Update(ctx context.Context, vm *store.VM) error
}

// NoCapability implements every hook as a no-op.
type NoCapability struct{}

func (NoCapability) Create(context.Context, *store.VM, *Plan) error                { return nil }
func (NoCapability) Prepare(context.Context, *store.VM, *guestconfig.Config) error { return nil }
func (NoCapability) Restoring(context.Context, *store.VM) error                    { return nil }
func (NoCapability) Ready(context.Context, *store.VM, *agent.Health) error         { return nil }
func (NoCapability) Release(context.Context, *store.VM) error                      { return nil }
func (NoCapability) Destroy(context.Context, *store.VM) error                      { return nil }
func (NoCapability) Reconcile(context.Context, []store.VM) error                   { return nil }

// capabilities runs the hooks of an ordered list of capabilities.
type capabilities []Capability

// create runs every Create hook in order, stopping at the first failure.
func (cs capabilities) create(ctx context.Context, vm *store.VM, p *Plan) error {
	for _, c := range cs {
		if err := c.Create(ctx, vm, p); err != nil {
			return fmt.Errorf("creating VM %s: %s: %w", vm.Name, c.Name(), err)
		}
	}
	return nil
}

// prepare runs every Prepare hook in order, stopping at the first failure;
// the caller then releases everything (Release is idempotent).
func (cs capabilities) prepare(ctx context.Context, vm *store.VM, g *guestconfig.Config) error {
	for _, c := range cs {
		if err := c.Prepare(ctx, vm, g); err != nil {
			return fmt.Errorf("preparing VM %s: %s: %w", vm.Name, c.Name(), err)
		}
	}
	return nil
}

// restoring runs every Restoring hook in order, stopping at the first
// failure; the caller then releases everything.
func (cs capabilities) restoring(ctx context.Context, vm *store.VM) error {
	for _, c := range cs {
		if err := c.Restoring(ctx, vm); err != nil {
			return fmt.Errorf("restoring VM %s: %s: %w", vm.Name, c.Name(), err)
		}
	}
	return nil
}

// update runs every Update hook in order, stopping at the first failure.
func (cs capabilities) update(ctx context.Context, vm *store.VM) error {
	for _, c := range cs {
		if u, ok := c.(Updater); ok {
			if err := u.Update(ctx, vm); err != nil {
				return fmt.Errorf("changing VM %s: %s: %w", vm.Name, c.Name(), err)
			}
		}
	}
	return nil
}

// ready runs every Ready hook in order, stopping at the first failure.
func (cs capabilities) ready(ctx context.Context, vm *store.VM, h *agent.Health) error {
	for _, c := range cs {
		if err := c.Ready(ctx, vm, h); err != nil {
			return fmt.Errorf("VM %s ready: %s: %w", vm.Name, c.Name(), err)
		}
	}
	return nil
}

// release runs every Release hook in reverse order; a failure does not stop
// the others, and all failures are returned.
func (cs capabilities) release(ctx context.Context, vm *store.VM) error {
	return cs.undo("releasing VM "+vm.Name, func(c Capability) error { return c.Release(ctx, vm) })
}

// destroy runs every Destroy hook in reverse order; a failure does not stop
// the others, and all failures are returned.
func (cs capabilities) destroy(ctx context.Context, vm *store.VM) error {
	return cs.undo("removing VM "+vm.Name, func(c Capability) error { return c.Destroy(ctx, vm) })
}

// undo runs hook for every capability in reverse order and joins the
// failures, each prefixed with what and the capability's name.
func (cs capabilities) undo(what string, hook func(Capability) error) error {
	var errs []error
	for i := len(cs) - 1; i >= 0; i-- {
		if err := hook(cs[i]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", what, cs[i].Name(), err))
		}
	}
	return errors.Join(errs...)
}

// reconcile runs every Reconcile hook in order; a failure does not stop the
// others, and all failures are returned.
func (cs capabilities) reconcile(ctx context.Context, vms []store.VM) error {
	var errs []error
	for _, c := range cs {
		if err := c.Reconcile(ctx, vms); err != nil {
			errs = append(errs, fmt.Errorf("reconciling %s: %w", c.Name(), err))
		}
	}
	return errors.Join(errs...)
}
