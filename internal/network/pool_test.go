package network

import (
	"context"
	"sort"
	"strings"
	"testing"
)

// TestPool fills, takes from, and re-adopts a TAP pool inside a namespace.
func TestPool(t *testing.T) {
	ctx := context.Background()
	m, _ := testManager(t)
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	p := &Pool{M: m, Size: 2, UID: 0, GID: 0}
	if err := p.Fill(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.Idle(); strings.Join(got, ",") != "tap-pool-0,tap-pool-1" {
		t.Fatalf("Idle() after Fill = %v, want tap-pool-0,tap-pool-1", got)
	}
	taken := p.Take()
	if taken != "tap-pool-0" {
		t.Fatalf("Take() = %q, want tap-pool-0", taken)
	}
	if err := p.Fill(ctx); err != nil {
		t.Fatal(err)
	}
	all, _ := m.ListTAPs(ctx, PoolPrefix, -1)
	sort.Strings(all)
	if strings.Join(all, ",") != "tap-pool-0,tap-pool-1,tap-pool-2" {
		t.Fatalf("pool devices after refill = %v", all)
	}
	// A restarted daemon adopts the idle devices, not the one a VM uses.
	q := &Pool{M: m, Size: 2}
	if err := q.Adopt(ctx, map[string]bool{taken: true}); err != nil {
		t.Fatal(err)
	}
	if got := q.Idle(); strings.Join(got, ",") != "tap-pool-1,tap-pool-2" {
		t.Fatalf("Idle() after Adopt = %v", got)
	}
	if err := q.Fill(ctx); err != nil {
		t.Fatal(err)
	}
	if all, _ := m.ListTAPs(ctx, PoolPrefix, -1); len(all) != 3 {
		t.Fatalf("Fill after Adopt created devices: %v", all)
	}
	// A pool that filled before adopting (a release at daemon start
	// refilled it) keeps what it made and drops the old leftovers.
	r := &Pool{M: m, Size: 2}
	if err := r.Fill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Adopt(ctx, map[string]bool{taken: true}); err != nil {
		t.Fatal(err)
	}
	if got := r.Idle(); strings.Join(got, ",") != "tap-pool-3,tap-pool-4" {
		t.Fatalf("Idle() after Fill then Adopt = %v, want tap-pool-3,tap-pool-4", got)
	}
	all, _ = m.ListTAPs(ctx, PoolPrefix, -1)
	sort.Strings(all)
	if strings.Join(all, ",") != "tap-pool-0,tap-pool-3,tap-pool-4" {
		t.Fatalf("pool devices after Fill then Adopt = %v, want tap-pool-0 (in use), 3 and 4", all)
	}
	// Size 0 is off.
	if (&Pool{M: m}).Take() != "" {
		t.Fatal("Take from an empty pool returned a device")
	}
}
