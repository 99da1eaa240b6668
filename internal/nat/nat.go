// Package nat gives VMs outbound NAT through banger's own nftables table, never touching other rules.
package nat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/runner"
)

// Defaults used when Manager fields are zero; the bridge and subnet are the
// network package's, so the two managers agree.
const (
	DefaultTable  = "banger"
	DefaultBridge = network.DefaultBridge
)

// DefaultSubnet is the guest subnet used when Manager.Subnet is zero.
var DefaultSubnet = network.DefaultSubnet

const (
	family      = "ip"
	chainNAT    = "postrouting"
	chainFwd    = "forward"
	vmTag       = "vm:"
	dropComment = "banger:drop"
	maxIDLen    = 64
)

// procIPForward is the sysctl file ForwardingEnabled reads; tests may point it elsewhere.
var procIPForward = "/proc/sys/net/ipv4/ip_forward"

// Manager maintains banger's nftables table (default "ip banger"); it never adds, changes
// or deletes anything outside that table. Its methods are safe for concurrent use; do not
// copy a Manager after first use. The table looks like this:
//
//	table ip banger {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr 172.30.0.2 oifname != "banger0" masquerade comment "vm:<id>"
//		}
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "banger0" ip saddr 172.30.0.2 accept comment "vm:<id>"
//			oifname "banger0" ip daddr 172.30.0.2 ct state established,related accept comment "vm:<id>"
//			iifname "banger0" oifname != "banger0" drop comment "banger:drop"
//		}
//	}
//
// Each NAT-enabled VM owns exactly three rules tagged "vm:<id>"; the final drop rule keeps
// guests without NAT from being routed anywhere. The forward chain's policy is accept, so
// traffic that does not come from the bridge is left to the user's rules, and the drop rule
// spares bridge-to-bridge traffic, which br_netfilter (loaded by Docker) also sends through
// this hook.
//
// The table only adds accepts for banger's own VMs. An accept in one nftables base chain
// does not override a drop in another, so when Docker or the user's firewall sets the
// iptables FORWARD policy to DROP, forwarded guest traffic is still dropped there and must
// be allowed in that firewall too (for Docker, in its DOCKER-USER chain).
//
// Routing also needs net.ipv4.ip_forward=1: see EnsureForwarding.
type Manager struct {
	R      runner.Runner // nil means runner.Default
	Table  string        // empty means DefaultTable; the table's family is always ip
	Bridge string        // empty means DefaultBridge
	Subnet netip.Prefix  // zero means DefaultSubnet; VM addresses must lie inside it
	Log    *slog.Logger  // nil means slog.Default()

	mu sync.Mutex
}

func (m *Manager) runner() runner.Runner {
	if m.R == nil {
		return runner.Default
	}
	return m.R
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.Default()
	}
	return m.Log
}

func (m *Manager) table() string {
	if m.Table == "" {
		return DefaultTable
	}
	return m.Table
}

func (m *Manager) bridge() string {
	if m.Bridge == "" {
		return DefaultBridge
	}
	return m.Bridge
}

func (m *Manager) subnet() netip.Prefix {
	if !m.Subnet.IsValid() {
		return DefaultSubnet
	}
	return m.Subnet.Masked()
}

// validate checks the fields that end up in nft commands.
func (m *Manager) validate() error {
	t := m.table()
	if !validName(t) {
		return fmt.Errorf("nft table name %q is invalid: use letters, digits and '_', starting with a letter", t)
	}
	br := m.bridge()
	if len(br) > 15 || strings.ContainsAny(br, "\"\\/: \t\n;") || br == "." || br == ".." {
		return fmt.Errorf("bridge name %q is invalid: use at most 15 characters without quotes, '/', ':' or spaces", br)
	}
	if s := m.subnet(); !s.Addr().Is4() {
		return fmt.Errorf("subnet %s is not IPv4: configure an IPv4 guest subnet", s)
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '_')) {
			return false
		}
	}
	return true
}

func validID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("vm id %q is invalid: it must have 1 to %d characters", id, maxIDLen)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("vm id %q is invalid: use only letters, digits, '-', '_' and '.'", id)
		}
	}
	return nil
}

// checkVM validates a VM id and address and returns the address as plain IPv4.
func (m *Manager) checkVM(id string, ip netip.Addr) (netip.Addr, error) {
	if err := validID(id); err != nil {
		return netip.Addr{}, err
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("vm %s address %v is not IPv4: give the vm an address in %s", id, ip, m.subnet())
	}
	if !m.subnet().Contains(ip) {
		return netip.Addr{}, fmt.Errorf("vm %s address %s is outside the guest subnet %s: give the vm an address in it", id, ip, m.subnet())
	}
	return ip, nil
}

// Script building. Every change is one nft invocation, so it applies atomically.

// baseScript recreates the table empty apart from its chains and the final drop rule.
// "add table" first makes "delete table" succeed when the table is absent.
func baseScript(table, bridge string) []string {
	return []string{
		fmt.Sprintf("add table %s %s", family, table),
		fmt.Sprintf("delete table %s %s", family, table),
		fmt.Sprintf("add table %s %s", family, table),
		fmt.Sprintf("add chain %s %s %s { type nat hook postrouting priority srcnat; policy accept; }", family, table, chainNAT),
		fmt.Sprintf("add chain %s %s %s { type filter hook forward priority filter; policy accept; }", family, table, chainFwd),
		fmt.Sprintf("add rule %s %s %s iifname %q oifname != %q drop comment %q", family, table, chainFwd, bridge, bridge, dropComment),
	}
}

// addVMScript adds a VM's rules. The forward rules are inserted at the top of the chain,
// so they stay ahead of the final drop rule.
func addVMScript(table, bridge, id string, ip netip.Addr) []string {
	c := strconv.Quote(vmTag + id)
	return []string{
		fmt.Sprintf("add rule %s %s %s ip saddr %s oifname != %q masquerade comment %s", family, table, chainNAT, ip, bridge, c),
		fmt.Sprintf("insert rule %s %s %s oifname %q ip daddr %s ct state established,related accept comment %s", family, table, chainFwd, bridge, ip, c),
		fmt.Sprintf("insert rule %s %s %s iifname %q ip saddr %s accept comment %s", family, table, chainFwd, bridge, ip, c),
	}
}

// deleteScript deletes rules by handle.
func deleteScript(table string, rules []rule) []string {
	var s []string
	for _, r := range rules {
		s = append(s, fmt.Sprintf("delete rule %s %s %s handle %d", family, table, r.Chain, r.Handle))
	}
	return s
}

// Signatures of the rules as nft lists them back (see sig), used to check the table.

func vmSigs(bridge string, ip netip.Addr) map[string][]string {
	return map[string][]string{
		chainNAT: {fmt.Sprintf("payload.ip.saddr == %s; meta.oifname != %s; masquerade", ip, bridge)},
		chainFwd: {
			fmt.Sprintf("meta.iifname == %s; payload.ip.saddr == %s; accept", bridge, ip),
			fmt.Sprintf("meta.oifname == %s; payload.ip.daddr == %s; ct.state in established,related; accept", bridge, ip),
		},
	}
}

func dropSig(bridge string) string {
	return fmt.Sprintf("meta.iifname == %s; meta.oifname != %s; drop", bridge, bridge)
}

// Reading the table.

// listing is the part of `nft -j list table` output banger reads.
type listing struct {
	Nftables []struct {
		Chain *struct {
			Name   string `json:"name"`
			Type   string `json:"type"`
			Hook   string `json:"hook"`
			Prio   int    `json:"prio"`
			Policy string `json:"policy"`
		} `json:"chain"`
		Rule *struct {
			Chain   string            `json:"chain"`
			Handle  int               `json:"handle"`
			Comment string            `json:"comment"`
			Expr    []json.RawMessage `json:"expr"`
		} `json:"rule"`
	} `json:"nftables"`
}

// rule is one listed rule.
type rule struct {
	Chain   string
	Handle  int
	Comment string
	Sig     string     // the expression in the form sig returns
	IP      netip.Addr // the address of its ip saddr/daddr match, if any
}

// state is the table as listed.
type state struct {
	Exists bool
	Chains map[string]string // name -> "type hook prio policy"
	Rules  []rule            // in listing order, which is evaluation order within a chain
}

const (
	natChainSpec = "nat postrouting 100 accept"
	fwdChainSpec = "filter forward 0 accept"
)

func (m *Manager) read(ctx context.Context) (*state, error) {
	t := m.table()
	out, err := m.runner().RunPrivileged(ctx, "nft", "-j", "list", "table", family, t)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return &state{}, nil
		}
		return nil, fmt.Errorf("listing nft table %s %s: %w", family, t, err)
	}
	st, err := parse(out)
	if err != nil {
		return nil, fmt.Errorf("listing nft table %s %s: %w", family, t, err)
	}
	return st, nil
}

// parse reads `nft -j list table` output.
func parse(out []byte) (*state, error) {
	var l listing
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("parsing nft json: %w", err)
	}
	st := &state{Exists: true, Chains: map[string]string{}}
	for _, o := range l.Nftables {
		if c := o.Chain; c != nil {
			st.Chains[c.Name] = fmt.Sprintf("%s %s %d %s", c.Type, c.Hook, c.Prio, c.Policy)
		}
		if r := o.Rule; r != nil {
			sig, ip := sig(r.Expr)
			st.Rules = append(st.Rules, rule{Chain: r.Chain, Handle: r.Handle, Comment: r.Comment, Sig: sig, IP: ip})
		}
	}
	return st, nil
}

// sig renders a rule expression as "left op right; ...; verdict", for example
// "meta.iifname == br0; payload.ip.saddr == 10.0.0.2; accept", and returns the address
// matched by ip saddr or ip daddr. Unknown statements render as their JSON, so they never
// equal an expected signature.
func sig(expr []json.RawMessage) (string, netip.Addr) {
	var parts []string
	var ip netip.Addr
	for _, raw := range expr {
		var st map[string]json.RawMessage
		if json.Unmarshal(raw, &st) != nil || len(st) != 1 {
			parts = append(parts, string(raw))
			continue
		}
		for k, v := range st {
			switch k {
			case "match":
				var mt struct {
					Op    string          `json:"op"`
					Left  json.RawMessage `json:"left"`
					Right json.RawMessage `json:"right"`
				}
				if json.Unmarshal(v, &mt) != nil {
					parts = append(parts, string(raw))
					continue
				}
				left, right := operand(mt.Left), operand(mt.Right)
				if left == "payload.ip.saddr" || left == "payload.ip.daddr" {
					if a, err := netip.ParseAddr(right); err == nil {
						ip = a
					}
				}
				parts = append(parts, left+" "+mt.Op+" "+right)
			case "accept", "drop", "masquerade":
				if string(v) == "null" {
					parts = append(parts, k)
				} else {
					parts = append(parts, string(raw))
				}
			default:
				parts = append(parts, string(raw))
			}
		}
	}
	return strings.Join(parts, "; "), ip
}

// operand renders a match operand: {"meta":{"key":"iifname"}} as "meta.iifname",
// {"payload":{"protocol":"ip","field":"saddr"}} as "payload.ip.saddr", {"ct":{"key":"state"}}
// as "ct.state", strings and numbers as themselves and lists (or sets) joined by commas.
func operand(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		var items []string
		for _, it := range list {
			items = append(items, operand(it))
		}
		return strings.Join(items, ",")
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) == nil && len(obj) == 1 {
		for k, v := range obj {
			switch k {
			case "set":
				return operand(v)
			case "meta", "ct":
				var f struct {
					Key string `json:"key"`
				}
				if json.Unmarshal(v, &f) == nil && f.Key != "" {
					return k + "." + f.Key
				}
			case "payload":
				var f struct {
					Protocol string `json:"protocol"`
					Field    string `json:"field"`
				}
				if json.Unmarshal(v, &f) == nil && f.Protocol != "" {
					return "payload." + f.Protocol + "." + f.Field
				}
			}
		}
	}
	return string(raw)
}

// vms returns the VMs that have rules, with the address their rules match.
func (st *state) vms() map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for _, r := range st.Rules {
		id, ok := strings.CutPrefix(r.Comment, vmTag)
		if !ok {
			continue
		}
		if _, seen := out[id]; !seen || !out[id].IsValid() {
			out[id] = r.IP
		}
	}
	return out
}

// vmRules returns the rules tagged with a VM's comment.
func (st *state) vmRules(id string) []rule {
	var rs []rule
	for _, r := range st.Rules {
		if r.Comment == vmTag+id {
			rs = append(rs, r)
		}
	}
	return rs
}

// vmOK reports whether a VM has exactly its expected rules for ip.
func vmOK(rs []rule, bridge string, ip netip.Addr) bool {
	got := map[string][]string{}
	for _, r := range rs {
		got[r.Chain] = append(got[r.Chain], r.Sig)
	}
	want := vmSigs(bridge, ip)
	if len(got) != len(want) {
		return false
	}
	for chain, w := range want {
		g := slices.Sorted(slices.Values(got[chain]))
		if !slices.Equal(g, slices.Sorted(slices.Values(w))) {
			return false
		}
	}
	return true
}

// healthy reports whether the table has the right chains, ends the forward chain with the
// drop rule, and holds nothing but complete VM rule sets for this bridge.
func (st *state) healthy(bridge string) bool {
	if !st.Exists || len(st.Chains) != 2 || st.Chains[chainNAT] != natChainSpec || st.Chains[chainFwd] != fwdChainSpec {
		return false
	}
	var lastFwd *rule
	drops := 0
	for i, r := range st.Rules {
		if r.Chain == chainFwd {
			lastFwd = &st.Rules[i]
		}
		switch {
		case r.Comment == dropComment:
			drops++
		case strings.HasPrefix(r.Comment, vmTag):
		default:
			return false
		}
	}
	if drops != 1 || lastFwd == nil || lastFwd.Comment != dropComment || lastFwd.Sig != dropSig(bridge) {
		return false
	}
	for id, ip := range st.vms() {
		if !vmOK(st.vmRules(id), bridge, ip) {
			return false
		}
	}
	return true
}

func (m *Manager) apply(ctx context.Context, what string, script []string) error {
	if len(script) == 0 {
		return nil
	}
	if _, err := m.runner().RunPrivileged(ctx, "nft", strings.Join(script, "\n")); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (m *Manager) ensure(ctx context.Context) (*state, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("ensuring nft table: %w", err)
	}
	st, err := m.read(ctx)
	if err != nil {
		return nil, err
	}
	br, t := m.bridge(), m.table()
	if st.healthy(br) {
		return st, nil
	}
	script := baseScript(t, br)
	kept := st.vms()
	for _, id := range sortedKeys(kept) {
		ip, err := m.checkVM(id, kept[id])
		if err != nil {
			m.log().Warn("dropping nat rules with an unusable vm tag", "table", t, "vm", id, "err", err)
			continue
		}
		script = append(script, addVMScript(t, br, id, ip)...)
	}
	if err := m.apply(ctx, fmt.Sprintf("creating nft table %s %s", family, t), script); err != nil {
		return nil, err
	}
	if st.Exists {
		m.log().Info("rebuilt nft table", "table", family+" "+t, "bridge", br, "vms", len(kept))
	} else {
		m.log().Info("created nft table", "table", family+" "+t, "bridge", br)
	}
	return m.read(ctx)
}

// Enable gives a VM outbound NAT. It ensures the table first; when the VM already has
// exactly these rules it changes nothing, and rules it has for another address are replaced.
func (m *Manager) Enable(ctx context.Context, id string, ip netip.Addr) error {
	ip, err := m.checkVM(id, ip)
	if err != nil {
		return fmt.Errorf("enabling nat for vm %s: %w", id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.ensure(ctx)
	if err != nil {
		return fmt.Errorf("enabling nat for vm %s: %w", id, err)
	}
	br, t := m.bridge(), m.table()
	old := st.vmRules(id)
	if len(old) > 0 && vmOK(old, br, ip) {
		return nil
	}
	script := append(deleteScript(t, old), addVMScript(t, br, id, ip)...)
	if err := m.apply(ctx, fmt.Sprintf("enabling nat for vm %s", id), script); err != nil {
		return err
	}
	m.log().Info("enabled nat", "vm", id, "ip", ip)
	return nil
}

// Disable removes a VM's NAT rules. A VM without rules, or a missing table, is not an error.
func (m *Manager) Disable(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("disabling nat for vm %s: %w", id, err)
	}
	if err := m.validate(); err != nil {
		return fmt.Errorf("disabling nat for vm %s: %w", id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.read(ctx)
	if err != nil {
		return fmt.Errorf("disabling nat for vm %s: %w", id, err)
	}
	old := st.vmRules(id)
	if len(old) == 0 {
		return nil
	}
	if err := m.apply(ctx, fmt.Sprintf("disabling nat for vm %s", id), deleteScript(m.table(), old)); err != nil {
		return err
	}
	m.log().Info("disabled nat", "vm", id)
	return nil
}

// Reconcile makes the NAT rules match want (VM id -> address) in one step: it ensures the
// table, removes the rules of VMs not in want or with another address, and adds missing ones.
// The daemon calls it at start with the running VMs that have NAT.
func (m *Manager) Reconcile(ctx context.Context, want map[string]netip.Addr) error {
	clean := make(map[string]netip.Addr, len(want))
	for id, ip := range want {
		a, err := m.checkVM(id, ip)
		if err != nil {
			return fmt.Errorf("reconciling nat rules: %w", err)
		}
		clean[id] = a
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.ensure(ctx)
	if err != nil {
		return fmt.Errorf("reconciling nat rules: %w", err)
	}
	script, removed, added := reconcileScript(st, m.table(), m.bridge(), clean)
	if err := m.apply(ctx, "reconciling nat rules", script); err != nil {
		return err
	}
	if len(removed)+len(added) > 0 {
		m.log().Info("reconciled nat rules", "removed", removed, "added", added)
	}
	return nil
}

// reconcileScript returns the commands that turn st into want, and the VM ids whose rules
// they remove and add, sorted.
func reconcileScript(st *state, table, bridge string, want map[string]netip.Addr) (script, removed, added []string) {
	have := st.vms()
	for _, id := range sortedKeys(have) {
		ip, ok := want[id]
		if !ok || !vmOK(st.vmRules(id), bridge, ip) {
			script = append(script, deleteScript(table, st.vmRules(id))...)
			removed = append(removed, id)
		}
	}
	for _, id := range sortedKeys(want) {
		ip := want[id]
		if _, ok := have[id]; ok && vmOK(st.vmRules(id), bridge, ip) {
			continue
		}
		script = append(script, addVMScript(table, bridge, id, ip)...)
		added = append(added, id)
	}
	return script, removed, added
}

func sortedKeys(m map[string]netip.Addr) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ForwardingEnabled reports whether net.ipv4.ip_forward is 1 in the calling thread's
// network namespace.
func ForwardingEnabled() (bool, error) {
	b, err := os.ReadFile(procIPForward)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", procIPForward, err)
	}
	switch v := strings.TrimSpace(string(b)); v {
	case "0":
		return false, nil
	case "1":
		return true, nil
	default:
		return false, fmt.Errorf("reading %s: unexpected value %q", procIPForward, v)
	}
}

// EnsureForwarding sets net.ipv4.ip_forward=1 (with sysctl -w, as root) when it is 0 and
// reports whether it changed it. The daemon calls it when the first NAT VM starts, and only
// then; banger never turns forwarding off again, because other software may rely on it.
func (m *Manager) EnsureForwarding(ctx context.Context) (changed bool, err error) {
	on, err := ForwardingEnabled()
	if err != nil {
		return false, fmt.Errorf("enabling ip forwarding: %w", err)
	}
	if on {
		return false, nil
	}
	if _, err := m.runner().RunPrivileged(ctx, "sysctl", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return false, fmt.Errorf("enabling ip forwarding: %w", err)
	}
	m.log().Info("enabled ip forwarding", "sysctl", "net.ipv4.ip_forward=1")
	return true, nil
}

// Check reports whether nft is installed and can read the kernel's ruleset, for `banger doctor`.
func Check(ctx context.Context, r runner.Runner) error {
	if r == nil {
		r = runner.Default
	}
	_, err := r.RunPrivileged(ctx, "nft", "list", "tables")
	switch {
	case err == nil:
		return nil
	case errors.Is(err, exec.ErrNotFound) || strings.Contains(err.Error(), "command not found"):
		return errors.New("nft not found: apt-get install nftables")
	case errors.Is(err, runner.ErrSudoPassword), errors.Is(err, runner.ErrSudoDenied):
		return fmt.Errorf("checking nft: %w", err)
	default:
		return fmt.Errorf("checking nft: %w: make sure the nf_tables kernel module loads (modprobe nf_tables)", err)
	}
}
