package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/store"
)

// egressCap enforces each NAT VM's egress policy (internal/egress): rules
// and sets in the owner's own nftables tables, names through banger's DNS.
// A VM without NAT, or with the open policy, has none.
type egressCap struct {
	NoCapability
	m *egress.Manager
	// served reports whether banger's DNS answers guests on the bridge:
	// policies that name domains need it.
	served  func() bool
	haveNFT func() bool
}

func (*egressCap) Name() string { return "egress" }

// PolicyOf is vm's egress policy; an empty record is the default policy.
func PolicyOf(vm *store.VM) (egress.Policy, error) {
	var p egress.Policy
	if vm.Egress == "" {
		return p, nil
	}
	if err := json.Unmarshal([]byte(vm.Egress), &p); err != nil {
		return p, fmt.Errorf("reading the egress policy of VM %s: %w", vm.Name, err)
	}
	return p, nil
}

// SetPolicy records p as vm's egress policy.
func SetPolicy(vm *store.VM, p egress.Policy) error {
	if err := p.Validate(); err != nil {
		return invalid("%w", err)
	}
	if p.Effective() == egress.ModeDefault && len(p.Allow) == 0 {
		vm.Egress = ""
		return nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("recording the egress policy of VM %s: %w", vm.Name, err)
	}
	vm.Egress = string(b)
	return nil
}

func (c *egressCap) Prepare(ctx context.Context, vm *store.VM, _ *guestconfig.Config) error {
	return c.Update(ctx, vm)
}

// Update makes vm's rules match its NAT setting and policy, at once: open
// connections are judged again on their next packet.
func (c *egressCap) Update(ctx context.Context, vm *store.VM) error {
	if c.m == nil {
		return nil
	}
	p, err := PolicyOf(vm)
	if err != nil {
		return err
	}
	if !vm.NAT || p.Effective() == egress.ModeOpen {
		return c.Release(ctx, vm)
	}
	if usesNames(p) && !c.served() {
		return unavailable(fmt.Errorf("egress policy %q names domains, which banger enforces through its own DNS on the bridge, and that is not serving: see 'banger doctor', or list networks only", p))
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return fmt.Errorf("VM %s has no address: %w", vm.Name, err)
	}
	return c.m.Apply(ctx, egress.VM{ID: vm.ID, IP: ip, TAP: vm.TAP, Policy: p})
}

func (c *egressCap) Release(ctx context.Context, vm *store.VM) error {
	if c.m == nil || (!vm.NAT && !c.haveNFT()) {
		return nil // no nft: there can be no rule to remove
	}
	return c.m.Remove(ctx, vm.ID)
}

func (c *egressCap) Destroy(ctx context.Context, vm *store.VM) error { return c.Release(ctx, vm) }

// Reconcile keeps the rules of the running NAT VMs that have a policy and
// removes every other VM's, rebuilding a damaged table.
func (c *egressCap) Reconcile(ctx context.Context, vms []store.VM) error {
	if c.m == nil {
		return nil
	}
	var want []egress.VM
	for i := range vms {
		vm := &vms[i]
		if !vm.NAT || !hostLive(vm) {
			continue
		}
		p, err := PolicyOf(vm)
		if err != nil || p.Effective() == egress.ModeOpen {
			continue
		}
		ip, err := netip.ParseAddr(vm.IP)
		if err != nil {
			continue
		}
		want = append(want, egress.VM{ID: vm.ID, IP: ip, TAP: vm.TAP, Policy: p})
	}
	if len(want) == 0 && !c.haveNFT() {
		return nil
	}
	return c.m.Reconcile(ctx, want)
}

// Stats is what vm's policy refused; egress.ErrNoPolicy when none is in
// force.
func (c *egressCap) Stats(ctx context.Context, vm *store.VM) (egress.Stats, error) {
	if c.m == nil {
		return egress.Stats{}, egress.ErrNoPolicy
	}
	return c.m.Stats(ctx, vm.ID)
}

func usesNames(p egress.Policy) bool {
	for _, l := range [][]egress.Entry{p.Allow, p.Deny} {
		for _, e := range l {
			if e.IsDomain() {
				return true
			}
		}
	}
	return false
}
