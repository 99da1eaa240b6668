package vm

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/store"
)

// tapCap gives each running VM a TAP device on the bridge (a pooled one when
// the pool has one ready) and the guest its static address.
type tapCap struct {
	NoCapability
	net      *network.Manager
	pool     *network.Pool
	names    network.Names
	uid, gid int
	refill   func() // refills the pool in the background
	log      *slog.Logger

	mu   sync.Mutex
	down map[string]string // TAP devices held down until Ready, by VM id
	// adopted is set once Reconcile took the pool's existing devices back:
	// until then the pool is not refilled, or a release during Adopt
	// would fill it beside the devices Reconcile is about to adopt, past
	// its size.
	adopted atomic.Bool
}

// refillAdopted refills the pool once it has been adopted.
func (c *tapCap) refillAdopted() {
	if c.adopted.Load() {
		c.refill()
	}
}

func (*tapCap) Name() string { return "network device" }

// Prepare decides the VM's TAP device, once per boot: a pooled one, or its
// own; the engine records it with the boot.
func (c *tapCap) Prepare(ctx context.Context, vm *store.VM, g *guestconfig.Config) error {
	if err := c.net.EnsureBridge(ctx); err != nil {
		return err
	}
	vm.TAP = c.names.TAPName(vm.ID)
	if tap := c.pool.Take(); tap != "" {
		vm.TAP = tap
		c.refillAdopted()
	}
	// Idempotent: for a pooled device this re-checks that it still exists
	// and is attached to the bridge.
	if err := c.net.CreateTAP(ctx, vm.TAP, c.uid, c.gid); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return fmt.Errorf("address of %s on record: %w", vm.Name, err)
	}
	g.Network.Client = ip
	g.Network.Gateway = c.net.Gateway()
	g.Network.PrefixLen = c.net.GuestSubnet().Bits()
	g.Network.Hostname = vm.Name
	g.Network.Device = "eth0"
	g.Network.Autoconf = "off"
	return nil
}

// Restoring holds the VM's TAP device down while its guest still has the
// snapshotted machine's address and MAC: a fork's copy would otherwise
// answer for its source, whose connections it carries, on the bridge.
func (c *tapCap) Restoring(ctx context.Context, vm *store.VM) error {
	if err := c.net.SetTAPUp(ctx, vm.TAP, false); err != nil {
		return err
	}
	c.mu.Lock()
	if c.down == nil {
		c.down = map[string]string{}
	}
	c.down[vm.ID] = vm.TAP
	c.mu.Unlock()
	return nil
}

// Ready brings up a TAP device Restoring held down: the guest has its own
// identity now.
func (c *tapCap) Ready(ctx context.Context, vm *store.VM, _ *agent.Health) error {
	c.mu.Lock()
	tap, ok := c.down[vm.ID]
	delete(c.down, vm.ID)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	return c.net.SetTAPUp(ctx, tap, true)
}

func (c *tapCap) Release(ctx context.Context, vm *store.VM) error {
	c.mu.Lock()
	delete(c.down, vm.ID)
	c.mu.Unlock()
	if vm.TAP == "" {
		return nil
	}
	err := c.net.DeleteTAP(ctx, vm.TAP)
	c.refillAdopted()
	return err
}

// Reconcile removes this owner's TAP devices no live hypervisor uses, then
// brings up the bridge and the pool, adopting idle pool devices, and only
// then lets the pool refill. It runs after Adopt, so the pool never holds
// more than its size.
func (c *tapCap) Reconcile(ctx context.Context, vms []store.VM) error {
	inUse := map[string]bool{}
	for _, vm := range vms {
		if vm.PID != 0 {
			inUse[vm.TAP] = true
		}
	}
	taps, err := c.net.ListTAPs(ctx, c.names.TAPPrefix, c.uid)
	if err != nil {
		c.log.Warn("listing tap devices", "err", err)
	}
	for _, t := range taps {
		if !inUse[t] {
			c.log.Info("removing orphan tap device", "tap", t)
			c.net.DeleteTAP(ctx, t)
		}
	}
	if err := c.net.EnsureBridge(ctx); err != nil {
		return fmt.Errorf("bridge not ready, VMs cannot start until it is: %w", err)
	}
	// With the pool off, Adopt removes leftover pool devices.
	if err := c.pool.Adopt(ctx, inUse); err != nil {
		return fmt.Errorf("adopting tap pool: %w", err)
	}
	c.adopted.Store(true)
	c.refill()
	return nil
}
