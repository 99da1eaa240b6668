package nat

import (
	"context"
	"fmt"
	"net/netip"
)

// Test-only views of the manager: bangerd itself only enables, disables
// and reconciles.

// Ensure creates banger's table with its chains and final drop rule. It does nothing when
// the table is already right; otherwise (say, after the bridge name changed) it rebuilds
// the table in one step, keeping the rules of every VM it held.
func (m *Manager) Ensure(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.ensure(ctx)
	return err
}

// Rules returns the VMs that currently have NAT rules, with their addresses. A missing
// table means none.
func (m *Manager) Rules(ctx context.Context) (map[string]netip.Addr, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("listing nat rules: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.read(ctx)
	if err != nil {
		return nil, err
	}
	return st.vms(), nil
}

// Teardown deletes banger's whole table; a missing table is not an error.
// It leaves ip_forward as it is.
func (m *Manager) Teardown(ctx context.Context) error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("deleting nft table: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.table()
	// "add" first makes the delete succeed when the table is absent.
	script := []string{fmt.Sprintf("add table %s %s", family, t), fmt.Sprintf("delete table %s %s", family, t)}
	if err := m.apply(ctx, fmt.Sprintf("deleting nft table %s %s", family, t), script); err != nil {
		return err
	}
	m.log().Info("deleted nft table", "table", family+" "+t)
	return nil
}
