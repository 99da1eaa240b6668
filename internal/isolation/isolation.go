// Package isolation keeps guests on banger's bridge from reaching each other's private ports, through banger's own nftables bridge table.
package isolation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// DefaultTable is the name of banger's table in the bridge family.
const DefaultTable = "banger"

// comment marks every rule this package writes.
const comment = "banger:private-ports"

// Manager maintains the tables "bridge <Table>" and "inet <Table>". Frames
// that one guest's TAP device sends to another guest through the bridge
// pass the bridge table's forward chain; packets a guest sends to another
// through the host (a neighbour entry or route pointing at the bridge
// address) pass the inet table's forward chain, in and out of the bridge.
// TCP to a private port is dropped in both. The host's own traffic passes
// neither (it is output, not forward), so the host still reaches those
// ports:
//
//	table bridge banger {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "bgtap-*" tcp dport { 4096 } drop comment "banger:private-ports"
//			iifname "tap-pool-*" tcp dport { 4096 } drop comment "banger:private-ports"
//		}
//	}
//	table inet banger {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "banger0" oifname "banger0" tcp dport { 4096 } drop comment "banger:private-ports"
//		}
//	}
//
// It never touches anything outside those tables.
type Manager struct {
	R runner.Runner
	// Table defaults to DefaultTable.
	Table string
	// Bridge is the guests' bridge (network.DefaultBridge).
	Bridge string
	// TAPPrefixes name the guests' bridge ports (network.TAPPrefix,
	// network.PoolPrefix).
	TAPPrefixes []string
	// Ports are the private guest TCP ports; empty means none, and Ensure
	// removes the table.
	Ports []int
}

func (m *Manager) runner() runner.Runner {
	if m.R == nil {
		return runner.Default
	}
	return m.R
}

func (m *Manager) table() string {
	if m.Table == "" {
		return DefaultTable
	}
	return m.Table
}

// Script is the nft script Ensure applies: it replaces the whole table in
// one transaction, so it is idempotent and never leaves half a table.
func (m *Manager) Script() ([]string, error) {
	t := m.table()
	if !validName(t) {
		return nil, fmt.Errorf("guest isolation: table name %q is not valid", t)
	}
	// "add" then "delete" removes an old table whether or not one exists.
	var script []string
	for _, fam := range families {
		script = append(script, "add table "+fam+" "+t, "delete table "+fam+" "+t)
	}
	if len(m.Ports) == 0 {
		return script, nil
	}
	var ports []string
	for _, p := range m.Ports {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("guest isolation: port %d is out of range 1-65535", p)
		}
		ports = append(ports, strconv.Itoa(p))
	}
	if len(m.TAPPrefixes) == 0 {
		return nil, errors.New("guest isolation: no TAP device prefixes to match guests by")
	}
	if !validName(m.Bridge) {
		return nil, fmt.Errorf("guest isolation: bridge name %q is not valid", m.Bridge)
	}
	script = append(script,
		"add table bridge "+t,
		"add chain bridge "+t+" forward { type filter hook forward priority filter; policy accept; }")
	for _, pre := range m.TAPPrefixes {
		if !validName(strings.TrimSuffix(pre, "-")) {
			return nil, fmt.Errorf("guest isolation: TAP prefix %q is not valid", pre)
		}
		script = append(script, fmt.Sprintf(`add rule bridge %s forward iifname "%s*" tcp dport { %s } drop comment "%s"`,
			t, pre, strings.Join(ports, ", "), comment))
	}
	script = append(script,
		"add table inet "+t,
		"add chain inet "+t+" forward { type filter hook forward priority filter; policy accept; }",
		fmt.Sprintf(`add rule inet %s forward iifname "%s" oifname "%s" tcp dport { %s } drop comment "%s"`,
			t, m.Bridge, m.Bridge, strings.Join(ports, ", "), comment))
	return script, nil
}

// Ensure makes the table hold exactly the rules for m.Ports (none: no table).
func (m *Manager) Ensure(ctx context.Context) error {
	script, err := m.Script()
	if err != nil {
		return err
	}
	if _, err := m.runner().RunPrivileged(ctx, "nft", strings.Join(script, "\n")); err != nil {
		return fmt.Errorf("guest isolation: applying nftables table bridge %s: %w", m.table(), err)
	}
	return nil
}

// families are the nft families of the tables, bridged then routed.
var families = []string{"bridge", "inet"}

// Active returns the private ports the tables in the kernel drop between
// guests, read back with nft; none when a table is absent, and an error
// when the two disagree.
func (m *Manager) Active(ctx context.Context) ([]int, error) {
	var got [][]int
	for _, fam := range families {
		out, err := m.runner().RunPrivileged(ctx, "nft", "list", "table", fam, m.table())
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				return nil, nil
			}
			return nil, fmt.Errorf("guest isolation: listing table %s %s: %w", fam, m.table(), err)
		}
		got = append(got, parsePorts(string(out)))
	}
	if !slices.Equal(got[0], got[1]) {
		return nil, fmt.Errorf("guest isolation: table bridge %s drops ports %v but inet %s drops %v: restart bangerd", m.table(), got[0], m.table(), got[1])
	}
	return got[0], nil
}

// parsePorts collects the ports of the rules this package wrote, from
// "nft list table" output.
func parsePorts(listing string) []int {
	seen := map[int]bool{}
	var ports []int
	for _, line := range strings.Split(listing, "\n") {
		if !strings.Contains(line, `comment "`+comment+`"`) {
			continue
		}
		_, rest, ok := strings.Cut(line, "dport ")
		if !ok {
			continue
		}
		rest, _, _ = strings.Cut(rest, " drop")
		rest = strings.Trim(rest, "{} ")
		for _, f := range strings.Split(rest, ",") {
			if p, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && !seen[p] {
				seen[p] = true
				ports = append(ports, p)
			}
		}
	}
	return ports
}

// validName accepts nft identifiers and interface name prefixes we write
// inside quotes: letters, digits, '-' and '_'.
func validName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
