package vm

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/store"
)

// natCap masquerades the outbound traffic of VMs with NAT on, through rules
// in the owner's own nftables table.
type natCap struct {
	NoCapability
	nat *nat.Manager
	log *slog.Logger
	// haveNFT reports whether nft is installed (doctor's tool check).
	haveNFT func() bool
}

func (*natCap) Name() string { return "nat" }

func (c *natCap) Prepare(ctx context.Context, vm *store.VM, _ *guestconfig.Config) error {
	if !vm.NAT {
		return nil
	}
	return c.apply(ctx, vm)
}

// Update adds or removes vm's NAT rules to match vm.NAT.
func (c *natCap) Update(ctx context.Context, vm *store.VM) error { return c.apply(ctx, vm) }

// apply adds or removes vm's NAT rules to match vm.NAT.
func (c *natCap) apply(ctx context.Context, vm *store.VM) error {
	if !vm.NAT {
		return c.nat.Disable(ctx, vm.ID)
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return err
	}
	if err := c.nat.Enable(ctx, vm.ID, ip); err != nil {
		return err
	}
	if changed, err := c.nat.EnsureForwarding(ctx); err != nil {
		return err
	} else if changed {
		c.log.Info("enabled net.ipv4.ip_forward for NAT guests")
	}
	return nil
}

func (c *natCap) Release(ctx context.Context, vm *store.VM) error {
	if !vm.NAT && !c.haveNFT() {
		return nil // no nft: there can be no rule to remove
	}
	return c.nat.Disable(ctx, vm.ID)
}

// Reconcile makes the table hold exactly the rules of the running VMs that
// have NAT on.
func (c *natCap) Reconcile(ctx context.Context, vms []store.VM) error {
	want := map[string]netip.Addr{}
	for _, vm := range vms {
		if vm.NAT && hostLive(&vm) {
			if ip, err := netip.ParseAddr(vm.IP); err == nil {
				want[vm.ID] = ip
			}
		}
	}
	if len(want) == 0 && !c.haveNFT() {
		return nil // no nft and nothing needs it
	}
	if err := c.nat.Reconcile(ctx, want); err != nil {
		return err
	}
	if len(want) > 0 {
		if _, err := c.nat.EnsureForwarding(ctx); err != nil {
			return err
		}
	}
	return nil
}

// haveTools is doctor's check that the tools of op are installed.
func haveTools(op string) func() bool {
	return func() bool { return doctor.RequireTools(op) == nil }
}
