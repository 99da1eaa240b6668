package vm

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/store"
)

// isolationCap keeps guests off each other's private ports (the opencode
// server's 4096 by default) with the owner's nftables tables; the host still
// reaches them. The tables are shared by the owner's VMs, so they are set up
// when the daemon starts.
type isolationCap struct {
	NoCapability
	iso     *isolation.Manager
	haveNFT func() bool
	spawn   func(func()) // runs work beside the boot (Engine.Go)
	ctx     func() context.Context
	log     *slog.Logger
}

func (*isolationCap) Name() string { return "guest isolation" }

// Prepare puts the tables back at every boot, in case something flushed
// the host's ruleset since the daemon started. The nft call (~15 ms here)
// runs beside the boot, off the create's critical path: the tables are in
// place long before the guest's userland runs.
func (c *isolationCap) Prepare(_ context.Context, vm *store.VM, _ *guestconfig.Config) error {
	if len(c.iso.Ports) == 0 || !c.haveNFT() {
		return nil // off, or no nft: doctor and the start-up log say so
	}
	name := vm.Name
	c.spawn(func() {
		if err := c.iso.Ensure(c.ctx()); err != nil {
			c.log.Warn("re-applying guest isolation", "vm", name, "err", err)
		}
	})
	return nil
}

func (c *isolationCap) Reconcile(ctx context.Context, _ []store.VM) error {
	if len(c.iso.Ports) > 0 {
		if !c.haveNFT() {
			return fmt.Errorf("guests can reach each other's ports %v: nft is not installed (apt-get install nftables)", c.iso.Ports)
		}
	} else if !c.haveNFT() {
		return nil // off, and no nft to remove a table with
	}
	return c.iso.Ensure(ctx)
}
