package network

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// PoolPrefix names idle TAP devices kept ready by a Pool.
const PoolPrefix = "tap-pool-"

// Pool keeps Size idle TAP devices attached to the bridge, so a create can
// take one instead of making one. A taken device belongs to its VM and is
// deleted with it; the pool refills in the background. Idle pool devices
// are reusable capacity, not leaks.
type Pool struct {
	M    *Manager
	Size int
	// Prefix names the pool's devices; empty means PoolPrefix.
	Prefix   string
	UID, GID int
	Log      *slog.Logger

	mu       sync.Mutex
	idle     []string
	creating string // the device Fill is creating, not yet idle
	next     int
	filling  bool
}

func (p *Pool) prefix() string {
	if p.Prefix == "" {
		return PoolPrefix
	}
	return p.Prefix
}

// Take returns an idle pooled TAP, or "" when the pool is empty or off.
func (p *Pool) Take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return ""
	}
	name := p.idle[0]
	p.idle = p.idle[1:]
	return name
}

// Idle lists the idle pooled TAPs.
func (p *Pool) Idle() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.idle...)
}

// Adopt takes existing pool devices that no VM uses (found at daemon start)
// back as idle capacity, and deletes those beyond Size. Devices the pool
// already holds, or is creating, are left alone, so a Fill that ran first
// is not undone and no device is handed out twice. Devices of another owner
// are never adopted nor deleted.
func (p *Pool) Adopt(ctx context.Context, inUse map[string]bool) error {
	names, err := p.M.ListTAPs(ctx, p.prefix(), p.UID)
	if err != nil {
		return err
	}
	sort.Strings(names)
	p.mu.Lock()
	var extra []string
	for _, n := range names {
		if i, err := strconv.Atoi(strings.TrimPrefix(n, p.prefix())); err == nil && i >= p.next {
			p.next = i + 1
		}
		if inUse[n] || n == p.creating || slices.Contains(p.idle, n) {
			continue
		}
		if len(p.idle) < p.Size {
			p.idle = append(p.idle, n)
		} else {
			extra = append(extra, n)
		}
	}
	p.mu.Unlock()
	for _, n := range extra {
		if err := p.M.DeleteTAP(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// Fill creates devices until Size are idle. Concurrent calls collapse into one.
func (p *Pool) Fill(ctx context.Context) error {
	p.mu.Lock()
	if p.filling {
		p.mu.Unlock()
		return nil
	}
	p.filling = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.filling = false
		p.mu.Unlock()
	}()
	// Every device of that prefix counts, whoever owns it: a name another
	// owner holds is skipped, never taken over.
	existing, err := p.M.ListTAPs(ctx, p.prefix(), -1)
	if err != nil {
		return fmt.Errorf("filling tap pool: %w", err)
	}
	taken := map[string]bool{}
	for _, n := range existing {
		taken[n] = true
	}
	for {
		p.mu.Lock()
		if len(p.idle) >= p.Size {
			p.mu.Unlock()
			return nil
		}
		name := p.prefix() + strconv.Itoa(p.next)
		p.next++
		if taken[name] {
			p.mu.Unlock()
			continue // never hand out a device that a VM may hold
		}
		p.creating = name
		p.mu.Unlock()
		err := p.M.CreateTAP(ctx, name, p.UID, p.GID)
		p.mu.Lock()
		p.creating = ""
		if err == nil {
			p.idle = append(p.idle, name)
		}
		p.mu.Unlock()
		if err != nil {
			return fmt.Errorf("filling tap pool: %w", err)
		}
	}
}

// Refill fills the pool in the background.
func (p *Pool) Refill(ctx context.Context) {
	if p.Size <= 0 {
		return
	}
	go func() {
		if err := p.Fill(ctx); err != nil && p.Log != nil {
			p.Log.Warn("refilling tap pool", "err", err)
		}
	}()
}
