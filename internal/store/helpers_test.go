package store

import (
	"context"
	"fmt"
	"net/netip"
)

// Test-only ways in: bangerd creates VMs with CreateVMWithLease alone.

// CreateVM inserts vm. An empty ID is filled with a random one, zero timestamps with now.
// A duplicate name, IP, CID or TAP returns an error wrapping ErrExists.
func (s *Store) CreateVM(ctx context.Context, vm *VM) error {
	if err := prepareVM(vm); err != nil {
		return fmt.Errorf("creating vm %s: %w", vm.Name, err)
	}
	if err := insertVM(ctx, s.db, vm); err != nil {
		return fmt.Errorf("creating vm %s: %w", vm.Name, err)
	}
	return nil
}

// AllocateIP returns the lowest host address of subnet that no VM uses and that is not
// in reserved. The network and broadcast addresses are never returned. The answer is
// only a suggestion: use CreateVMWithLease to allocate and insert atomically.
func (s *Store) AllocateIP(ctx context.Context, subnet netip.Prefix, reserved []netip.Addr) (netip.Addr, error) {
	ip, err := allocateIP(ctx, s.db, subnet, reserved)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocating address in %s: %w", subnet, err)
	}
	return ip, nil
}
