package egress

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/runner"
)

// Bounds on how long an address that banger's DNS answered stays in a VM's
// set: the record's TTL (plus a little grace), at least MinTimeout so a
// guest has time to connect after a TTL-0 answer, and at most MaxTimeout.
// Answers to a filtered guest never carry a TTL above MaxTimeout, so the
// guest never caches an address longer than the set keeps it. Connections
// already open outlive the address's timeout (see Manager).
const (
	MinTimeout = 30 * time.Second
	MaxTimeout = time.Hour
	// denyMinTimeout keeps a denied name's addresses longer: erring that
	// way only denies an address a little longer.
	denyMinTimeout = 5 * time.Minute
	grace          = 2 * time.Second
)

// Defaults for the Manager fields left zero.
const (
	DefaultInterval = 15 * time.Second
	DefaultLogEvery = 10 * time.Second
	resolveTimeout  = 3 * time.Second
	nftTimeout      = 5 * time.Second
	maxResolvers    = 8
)

// learnTimeout is how long an address from an answer with ttl stays in an
// allow set.
func learnTimeout(ttl uint32) time.Duration {
	return clampTimeout(time.Duration(ttl)*time.Second+grace, MinTimeout)
}

// denyTimeout is how long an address of a denied name stays in a deny set.
func denyTimeout(ttl uint32) time.Duration {
	return clampTimeout(time.Duration(ttl)*time.Second+grace, denyMinTimeout)
}

func clampTimeout(d, lo time.Duration) time.Duration {
	return min(max(d, lo), MaxTimeout)
}

// TableName is the egress table of an owner whose tables are named base
// (network.Names.Table): "banger_egress", "banger_u1000_egress".
func TableName(base string) string { return base + "_egress" }

// Resolver looks up a name's A records the way banger's DNS server forwards
// (dns.Server.Resolve).
type Resolver interface {
	Resolve(ctx context.Context, name string) ([]netip.Addr, uint32, error)
}

// VM is what the manager needs to know of one VM.
type VM struct {
	ID     string
	IP     netip.Addr // the guest's address on the owner's bridge
	TAP    string     // the guest's TAP device, a port of the bridge
	Policy Policy
}

// Manager enforces the egress policies of one bangerd owner's VMs in the
// nftables tables "ip <Table>" and "bridge <Table>" (TableName of the
// owner's base name), which hold nothing else and which nothing else
// touches:
//
//	table ip banger_egress {
//		set closed { type ipv4_addr; flags interval; elements = { 0.0.0.0/8, 10.0.0.0/8, ... } }
//		chain forward { type filter hook forward priority filter - 10; policy accept;
//			iifname "banger0" oifname != "banger0" ip saddr 172.30.0.2 jump v_<id>_fwd comment "vm:<id>"
//		}
//		chain input { type filter hook input priority filter - 10; policy accept;
//			iifname "banger0" ip saddr 172.30.0.2 jump v_<id>_in comment "vm:<id>"
//		}
//		set v_<id>_anet, v_<id>_aport   allowed networks (any port; address . protocol . port)
//		set v_<id>_adns, v_<id>_adnsp   addresses banger's DNS answered for allowed names (timeouts)
//		set v_<id>_dnet, v_<id>_dport   denied networks
//		set v_<id>_ddns, v_<id>_ddnsp   addresses of denied names (timeouts)
//		set v_<id>_seen                 recently refused destinations, with the reason
//		counter v_<id>_denied, _resolver, _private, _unlisted, _host
//		chain v_<id>_fwd {
//			ct direction reply accept comment "banger:egress fp=... gen=..."
//			ct state established,related ct mark and 0xffff0000 == <gen> accept
//			<deny sets> -> refuse (denied)
//			<allowed networks> -> accept, stamping ct mark with <gen>
//			(allow, deny) th dport { 53, 853 } -> refuse (resolver)
//			@closed -> refuse (private)
//			(allow) <learned allowed addresses> -> accept; else refuse (unlisted)
//			(default, deny) accept
//		}
//		chain v_<id>_in { answers to the host's connections, banger's DNS on the bridge
//			address and allowed networks pass; the rest -> refuse (host) }
//		chain v_<id>_refuse { record in v_<id>_seen; drop }
//	}
//	table bridge banger_egress {
//		chain prerouting { type filter hook prerouting priority filter - 10; policy accept;
//			iifname "bgtap-<id>" jump v_<id>_port comment "vm:<id>"
//		}
//		chain v_<id>_port { ip saddr 172.30.0.2 return; arp saddr ip 172.30.0.2 return; counter name v_<id>_spoofed drop }
//	}
//
// The rules above know a guest by its source address, so the bridge table
// keeps a filtered guest to it: a frame from its TAP device must be IPv4
// from its own address or ARP for it. Without that, a guest could send with
// another guest's address (and that guest's policy, or none), or over IPv6,
// which the ip table never sees and which reaches the host's link-local
// addresses on the bridge.
//
// Why a table of its own with base chains at priority filter - 10 rather
// than rules in the NAT table's forward chain: the NAT table (internal/nat)
// is deleted and rebuilt whenever it is not exactly as nat makes it, which
// would wipe these rules and their learned sets; a drop in any base chain
// is final, so these chains cannot be overridden by NAT's accepts (or
// anyone's) whatever the order, and running before NAT's forward chain
// (priority filter) means a refused packet is counted here and goes no
// further; and the host's own addresses are reached through the input
// hook, which the NAT table does not have. So the contract with nat is
// none: the two tables can be created, rebuilt and removed in any order.
//
// Established connections: every packet a guest sends passes its chain,
// but one whose connection was accepted under the VM's current policy is
// let through at the second rule by its ct mark (the high 16 bits carry
// the policy's generation, the low 16 bits are left to others). A policy
// change picks a new generation, so connections opened under the old one
// are judged again on their next packet: a tightened policy cuts them at
// once, and a connection to an address of an allowed name survives the
// address's timeout.
//
// Its methods are safe for concurrent use; do not copy a Manager after
// first use.
type Manager struct {
	R runner.Runner // nil means runner.Default
	// Table is the table's name, TableName(names.Table).
	Table string
	// Bridge is the owner's bridge.
	Bridge string
	// Subnet is the owner's guest subnet; VM addresses must lie in it.
	Subnet netip.Prefix
	// Gateway is the bridge's address, where banger's DNS listens; zero
	// means the subnet's first address.
	Gateway netip.Addr
	// DNSPort is the port banger's DNS listens on at Gateway when it is
	// not 53 (an unprivileged bangerd's 10053, redirected from 53).
	DNSPort int
	// Resolver finds the addresses of denied names before a guest asks.
	// Nil learns them only when a guest asks.
	Resolver Resolver
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Interval is how often Run refreshes denied names' addresses and
	// reads the counters; zero means DefaultInterval.
	Interval time.Duration
	// LogEvery is the least time between two "egress refused" log lines
	// of one VM; zero means DefaultLogEvery.
	LogEvery time.Duration

	now func() time.Time // tests

	nftMu   sync.Mutex // serializes read-modify-write of the table; taken before mu
	updates int8       // whether "add" updates an element's timeout: 0 unknown, 1 yes, -1 no (under nftMu)
	mu      sync.Mutex // guards the maps below
	vms     map[string]*vmState
	byIP    map[netip.Addr]*vmState
}

// vmState is what the manager keeps of one VM with a policy in the table.
type vmState struct {
	spec        spec
	fp          string
	gen         uint16
	learned     map[learnKey]time.Time // expiry of what the learned sets hold
	denyRefresh map[string]time.Time   // denied names and when to resolve them again
	recent      ring
	names       uint64             // names refused
	counters    map[Reason]Counter // as last read
	logged      map[Reason]Counter // as at the last log line
	lastLog     time.Time
	pending     []string // names refused since the last log line (bounded)
	pendingN    int
}

func newState(s spec, fp string, gen uint16) *vmState {
	return &vmState{spec: s, fp: fp, gen: gen, learned: map[learnKey]time.Time{}, denyRefresh: map[string]time.Time{},
		counters: map[Reason]Counter{}, logged: map[Reason]Counter{}}
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

func (m *Manager) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

func (m *Manager) interval() time.Duration {
	if m.Interval <= 0 {
		return DefaultInterval
	}
	return m.Interval
}

func (m *Manager) logEvery() time.Duration {
	if m.LogEvery <= 0 {
		return DefaultLogEvery
	}
	return m.LogEvery
}

// layout validates the fields that end up in nft commands.
func (m *Manager) layout() (layout, error) {
	if !nameRE.MatchString(m.Table) {
		return layout{}, fmt.Errorf("egress table name %q is invalid: use letters, digits and '_', starting with a letter", m.Table)
	}
	if !validIfName(m.Bridge) {
		return layout{}, fmt.Errorf("bridge name %q is invalid: use 1 to 15 characters without quotes, '/', ':', '*' or spaces", m.Bridge)
	}
	if !m.Subnet.IsValid() || !m.Subnet.Addr().Is4() {
		return layout{}, fmt.Errorf("guest subnet %v is not IPv4: configure an IPv4 guest subnet", m.Subnet)
	}
	gw := m.Gateway
	if !gw.IsValid() {
		gw = m.Subnet.Masked().Addr().Next()
	}
	if !gw.Is4() || !m.Subnet.Contains(gw) {
		return layout{}, fmt.Errorf("gateway %v is not in the guest subnet %s", gw, m.Subnet)
	}
	if m.DNSPort < 0 || m.DNSPort > 65535 {
		return layout{}, fmt.Errorf("dns port %d is out of range 1-65535", m.DNSPort)
	}
	return layout{table: m.Table, bridge: m.Bridge, gateway: gw, dnsPort: uint16(m.DNSPort)}, nil
}

// validIfName reports whether s can be an interface name in nft rules.
func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && !strings.ContainsAny(s, "\"\\/: \t\n;*")
}

// check validates a VM and returns its spec.
func (m *Manager) check(vm VM) (spec, error) {
	if !idRE.MatchString(vm.ID) {
		return spec{}, fmt.Errorf("vm id %q is invalid: use 1 to 64 letters, digits, '-', '_' and '.', starting with a letter or digit", vm.ID)
	}
	ip := vm.IP.Unmap()
	if !ip.Is4() || !m.Subnet.Contains(ip) {
		return spec{}, fmt.Errorf("vm %s address %v is outside the guest subnet %s: give the vm an address in it", vm.ID, vm.IP, m.Subnet)
	}
	if gw, err := m.layout(); err == nil && ip == gw.gateway {
		return spec{}, fmt.Errorf("vm %s address %s is the bridge's own", vm.ID, ip)
	}
	if err := vm.Policy.Validate(); err != nil {
		return spec{}, err
	}
	p := vm.Policy
	p.Mode = p.Effective()
	if p.Mode != ModeOpen && !validIfName(vm.TAP) {
		return spec{}, fmt.Errorf("vm %s TAP device name %q is invalid: give the vm's bridge port, 1 to 15 characters without quotes, '/', ':', '*' or spaces", vm.ID, vm.TAP)
	}
	return spec{id: vm.ID, ip: ip, tap: vm.TAP, policy: p}, nil
}

// read lists the ip and bridge tables.
func (m *Manager) read(ctx context.Context) (*tableState, error) {
	list := func(family string) ([]byte, bool, error) {
		out, err := m.runner().RunPrivileged(ctx, "nft", "-j", "list", "table", family, m.Table)
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				return nil, false, nil
			}
			return nil, false, fmt.Errorf("listing nft table %s %s: %w", family, m.Table, err)
		}
		return out, true, nil
	}
	out, ok, err := list("ip")
	if err != nil {
		return nil, err
	}
	st := &tableState{vms: map[string]*vmListing{}}
	if ok {
		if st, err = parseListing(out); err != nil {
			return nil, fmt.Errorf("listing nft table ip %s: %w", m.Table, err)
		}
	}
	out, ok, err = list("bridge")
	if err != nil {
		return nil, err
	}
	if ok {
		if err := parseBridgeListing(out, st); err != nil {
			return nil, fmt.Errorf("listing nft table bridge %s: %w", m.Table, err)
		}
	}
	// Only one of the two tables is not as banger makes them.
	if st.exists != st.bexists {
		st.exists, st.baseOK = true, false
	}
	return st, nil
}

func (m *Manager) apply(ctx context.Context, what string, script []string) error {
	if len(script) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, nftTimeout)
	defer cancel()
	if _, err := m.runner().RunPrivileged(ctx, "nft", strings.Join(script, "\n")); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// newGen picks a random nonzero generation other than the ones to avoid.
func newGen(avoid ...uint16) uint16 {
	for {
		var b [2]byte
		rand.Read(b[:])
		g := binary.BigEndian.Uint16(b[:])
		if g != 0 && !slices.Contains(avoid, g) {
			return g
		}
	}
}

// complete reports whether a listed VM has every object and all its jumps.
func (v *vmListing) complete() bool {
	return v != nil && len(v.jumps) == 2 && len(v.chains) == 3 && len(v.sets) == 9 && len(v.counters) == len(ipReasons) &&
		len(v.bjumps) == 1 && v.bchain && v.bcounter
}

// Apply gives a VM its policy, replacing any it had, in one nft
// transaction: its current connections are judged by the new policy on
// their next packet. ModeOpen removes the VM's rules (Remove). Applying the
// policy a VM already has changes nothing (its learned addresses stay).
// Denied names are resolved first, so their addresses are dropped from the
// moment Apply returns. The daemon calls it when a NAT VM boots (Prepare)
// and when its policy changes (vm set).
func (m *Manager) Apply(ctx context.Context, vm VM) error {
	s, err := m.check(vm)
	if err != nil {
		return fmt.Errorf("applying egress policy to vm %s: %w", vm.ID, err)
	}
	if s.policy.Mode == ModeOpen {
		return m.Remove(ctx, vm.ID)
	}
	l, err := m.layout()
	if err != nil {
		return fmt.Errorf("applying egress policy to vm %s: %w", vm.ID, err)
	}
	pre, refresh := m.resolveDenied(ctx, []spec{s})

	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	st, err := m.read(ctx)
	if err != nil {
		return fmt.Errorf("applying egress policy to vm %s: %w", vm.ID, err)
	}
	fp := l.fingerprint(s)
	have := st.vms[s.id]
	m.mu.Lock()
	cur := m.vms[s.id]
	other := m.byIP[s.ip]
	m.mu.Unlock()
	if other != nil && other.spec.id != s.id {
		return fmt.Errorf("applying egress policy to vm %s: address %s is vm %s's: remove that vm's policy first", s.id, s.ip, other.spec.id)
	}
	if cur != nil && cur.fp == fp && have.complete() && have.fp == fp && have.gen == cur.gen {
		return nil
	}
	if st.exists && (!st.baseOK || st.baseRules > 0) {
		// Not as banger makes it: rebuild it with every VM it should hold.
		want := []spec{s}
		m.mu.Lock()
		for id, vs := range m.vms {
			if id != s.id {
				want = append(want, vs.spec)
			}
		}
		m.mu.Unlock()
		return m.reconcileLocked(ctx, l, st, want, pre, refresh)
	}
	var oldGen uint16
	if have != nil {
		oldGen = have.gen
	}
	gen := newGen(oldGen)
	keys := pre[s.id]
	script := append(l.baseScript(), l.createScript(s, gen, have, learnScript(l.t(), objectsOf(s.id), keys, nil, nil))...)
	if err := m.apply(ctx, fmt.Sprintf("applying egress policy to vm %s", s.id), script); err != nil {
		return err
	}
	ns := newState(s, fp, gen)
	now := m.clock()
	for k, d := range keys {
		ns.learned[k] = now.Add(d)
	}
	ns.denyRefresh = refresh[s.id]
	m.mu.Lock()
	if cur != nil {
		ns.recent, ns.names, ns.counters, ns.logged, ns.lastLog = cur.recent, cur.names, cur.counters, cur.logged, cur.lastLog
		delete(m.byIP, cur.spec.ip)
	}
	m.setState(ns)
	m.mu.Unlock()
	m.log().Info("applied egress policy", "vm", s.id, "ip", s.ip, "policy", s.policy.String())
	return nil
}

// setState records vs; the caller holds mu.
func (m *Manager) setState(vs *vmState) {
	if m.vms == nil {
		m.vms, m.byIP = map[string]*vmState{}, map[netip.Addr]*vmState{}
	}
	m.vms[vs.spec.id] = vs
	m.byIP[vs.spec.ip] = vs
}

// Remove deletes every set, counter, chain and rule of a VM. A VM without
// any, or a missing table, is not an error. The daemon calls it when a VM
// stops (Release), is deleted (Destroy) or gets ModeOpen.
func (m *Manager) Remove(ctx context.Context, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("removing egress policy of vm %q: the id is invalid", id)
	}
	l, err := m.layout()
	if err != nil {
		return fmt.Errorf("removing egress policy of vm %s: %w", id, err)
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	st, err := m.read(ctx)
	if err != nil {
		return fmt.Errorf("removing egress policy of vm %s: %w", id, err)
	}
	if have := st.vms[id]; have != nil {
		if err := m.apply(ctx, fmt.Sprintf("removing egress policy of vm %s", id), l.removeScript(have)); err != nil {
			return err
		}
		m.log().Info("removed egress policy", "vm", id)
	}
	m.mu.Lock()
	if vs := m.vms[id]; vs != nil {
		delete(m.vms, id)
		if m.byIP[vs.spec.ip] == vs {
			delete(m.byIP, vs.spec.ip)
		}
	}
	m.mu.Unlock()
	return nil
}

// Reconcile makes the table hold exactly the given VMs' policies in one
// transaction: VMs not given (or with ModeOpen) lose theirs, VMs whose rules
// are already right keep them with their learned addresses and counters
// (so guests' cached DNS answers stay good across a daemon restart), and the
// rest get theirs anew. A table that is not as banger makes it is rebuilt.
// The daemon calls it at start with the running NAT VMs.
func (m *Manager) Reconcile(ctx context.Context, vms []VM) error {
	l, err := m.layout()
	if err != nil {
		return fmt.Errorf("reconciling egress policies: %w", err)
	}
	var want []spec
	ips := map[netip.Addr]string{}
	for _, vm := range vms {
		s, err := m.check(vm)
		if err != nil {
			return fmt.Errorf("reconciling egress policies: %w", err)
		}
		if other, ok := ips[s.ip]; ok {
			return fmt.Errorf("reconciling egress policies: vms %s and %s share address %s", other, s.id, s.ip)
		}
		ips[s.ip] = s.id
		if s.policy.Mode != ModeOpen {
			want = append(want, s)
		}
	}
	pre, refresh := m.resolveDenied(ctx, want)
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	st, err := m.read(ctx)
	if err != nil {
		return fmt.Errorf("reconciling egress policies: %w", err)
	}
	return m.reconcileLocked(ctx, l, st, want, pre, refresh)
}

func (m *Manager) reconcileLocked(ctx context.Context, l layout, st *tableState, want []spec, pre map[string]map[learnKey]time.Duration, refresh map[string]map[string]time.Time) error {
	rebuild := st.exists && (!st.baseOK || st.baseRules > 0)
	var script []string
	if rebuild {
		script = append(script, "add table "+l.t(), "delete table "+l.t(), "add table "+l.b(), "delete table "+l.b())
	}
	script = append(script, l.baseScript()...)
	wanted := map[string]bool{}
	for _, s := range want {
		wanted[s.id] = true
	}
	var removed, kept, added []string
	if !rebuild {
		for _, id := range slices.Sorted(mapKeys(st.vms)) {
			if !wanted[id] {
				script = append(script, l.removeScript(st.vms[id])...)
				removed = append(removed, id)
			}
		}
	}
	now := m.clock()
	states := map[string]*vmState{}
	for _, s := range want {
		fp := l.fingerprint(s)
		have := st.vms[s.id]
		o := objectsOf(s.id)
		if !rebuild && have.complete() && have.fp == fp {
			vs := newState(s, fp, have.gen)
			for set, elems := range have.elems {
				for _, e := range elems {
					k := learnKey{addr: e.addr, proto: e.proto, port: e.port}
					switch set {
					case o.adns, o.adnsp:
					case o.ddns, o.ddnsp:
						k.deny = true
					default:
						continue
					}
					vs.learned[k] = now.Add(e.expires)
				}
			}
			for _, r := range ipReasons {
				vs.counters[r] = have.counters[o.counter(r)]
			}
			vs.counters[ReasonSpoofed] = have.spoofed
			vs.logged = maps(vs.counters)
			states[s.id] = vs
			if keys := pre[s.id]; len(keys) > 0 {
				script = append(script, learnScript(l.t(), o, keys, func(learnKey) bool { return m.updates != 1 }, nil)...)
			}
			kept = append(kept, s.id)
			continue
		}
		var oldGen uint16
		if have != nil {
			oldGen = have.gen
			if !rebuild {
				script = append(script, l.removeScript(have)...)
			}
		}
		gen := newGen(oldGen)
		script = append(script, l.createScript(s, gen, nil, learnScript(l.t(), o, pre[s.id], nil, nil))...)
		states[s.id] = newState(s, fp, gen)
		added = append(added, s.id)
	}
	if err := m.apply(ctx, "reconciling egress policies", script); err != nil {
		return err
	}
	m.mu.Lock()
	old := m.vms
	m.vms, m.byIP = nil, nil
	for _, s := range want {
		vs := states[s.id]
		for k, d := range pre[s.id] {
			vs.learned[k] = now.Add(d)
		}
		vs.denyRefresh = refresh[s.id]
		if o := old[s.id]; o != nil {
			vs.recent, vs.names, vs.lastLog = o.recent, o.names, o.lastLog
		}
		m.setState(vs)
	}
	m.mu.Unlock()
	if rebuild || len(removed)+len(added) > 0 {
		m.log().Info("reconciled egress policies", "table", "ip "+m.Table, "rebuilt", rebuild, "removed", removed, "kept", kept, "added", added)
	}
	return nil
}

func maps(c map[Reason]Counter) map[Reason]Counter {
	out := make(map[Reason]Counter, len(c))
	for k, v := range c {
		out[k] = v
	}
	return out
}

// Teardown deletes the whole table; a missing table is not an error.
func (m *Manager) Teardown(ctx context.Context) error {
	if !nameRE.MatchString(m.Table) {
		return fmt.Errorf("deleting egress table: table name %q is invalid", m.Table)
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	t, b := "ip "+m.Table, "bridge "+m.Table
	if err := m.apply(ctx, "deleting nft tables "+t+" and "+b, []string{"add table " + t, "delete table " + t, "add table " + b, "delete table " + b}); err != nil {
		return err
	}
	m.mu.Lock()
	m.vms, m.byIP = nil, nil
	m.mu.Unlock()
	return nil
}

// resolveDenied looks up the denied names (not wildcards) of deny-mode
// specs, concurrently and within resolveTimeout, and returns the keys to add
// by VM and when to look each name up again. A name that does not resolve
// is tried again at the next Run tick.
func (m *Manager) resolveDenied(ctx context.Context, specs []spec) (map[string]map[learnKey]time.Duration, map[string]map[string]time.Time) {
	keys := map[string]map[learnKey]time.Duration{}
	refresh := map[string]map[string]time.Time{}
	type job struct {
		id   string
		name string
	}
	var jobs []job
	for _, s := range specs {
		refresh[s.id] = map[string]time.Time{}
		if s.policy.Mode != ModeDeny {
			continue
		}
		for _, n := range deniedNames(s.policy) {
			jobs = append(jobs, job{s.id, n})
		}
	}
	if len(jobs) == 0 || m.Resolver == nil {
		return keys, refresh
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	type result struct {
		job
		addrs []netip.Addr
		ttl   uint32
		err   error
	}
	results := make([]result, len(jobs))
	sem := make(chan struct{}, maxResolvers)
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			a, ttl, err := m.Resolver.Resolve(ctx, j.name)
			results[i] = result{j, a, ttl, err}
		}()
	}
	wg.Wait()
	now := m.clock()
	byID := map[string]spec{}
	for _, s := range specs {
		byID[s.id] = s
	}
	for _, r := range results {
		if r.err != nil || len(r.addrs) == 0 {
			refresh[r.id][r.name] = now.Add(m.interval())
			continue
		}
		d := denyTimeout(r.ttl)
		if keys[r.id] == nil {
			keys[r.id] = map[learnKey]time.Duration{}
		}
		for k := range denyKeys(byID[r.id].policy, []string{r.name}, r.addrs) {
			keys[r.id][k] = d
		}
		// Look again well before the addresses expire.
		refresh[r.id][r.name] = now.Add(max(d/2, d-3*m.interval()))
	}
	return keys, refresh
}

// deniedNames are the deny list's plain names (wildcards cannot be
// resolved ahead).
func deniedNames(p Policy) []string {
	var out []string
	for _, e := range p.Deny {
		if e.IsDomain() && !strings.HasPrefix(e.Domain, "*.") && !slices.Contains(out, e.Domain) {
			out = append(out, e.Domain)
		}
	}
	return out
}

// denyKeys are the deny-set keys for addrs of a name chain.
func denyKeys(p Policy, chain []string, addrs []netip.Addr) map[learnKey]bool {
	out := map[learnKey]bool{}
	for _, e := range p.Deny {
		if !matchesAny(e, chain) {
			continue
		}
		for _, a := range addrs {
			if e.Port == 0 {
				out[learnKey{deny: true, addr: a}] = true
				continue
			}
			for _, proto := range protos(e.Proto) {
				out[learnKey{deny: true, addr: a, proto: proto, port: e.Port}] = true
			}
		}
	}
	return out
}

// allowKeys are the allow-set keys for addrs of an allowed name.
func allowKeys(p Policy, name string, addrs []netip.Addr) map[learnKey]bool {
	out := map[learnKey]bool{}
	for _, e := range p.Allow {
		if !e.MatchesName(name) {
			continue
		}
		for _, a := range addrs {
			if e.Port == 0 {
				out[learnKey{addr: a}] = true
				continue
			}
			for _, proto := range protos(e.Proto) {
				out[learnKey{addr: a, proto: proto, port: e.Port}] = true
			}
		}
	}
	return out
}

func matchesAny(e Entry, names []string) bool {
	for _, n := range names {
		if e.MatchesName(n) {
			return true
		}
	}
	return false
}

// deniedName reports whether a portless deny entry covers one of names.
func deniedName(p Policy, names []string) bool {
	for _, e := range p.Deny {
		if e.Port == 0 && matchesAny(e, names) {
			return true
		}
	}
	return false
}

// learn adds keys to a VM's learned sets, each with its timeout, skipping
// those the sets already hold for at least need (what the guest may cache
// the answer for), and evicting what expires first when a VM would hold
// more than maxLearned. The caller holds nftMu.
func (m *Manager) learn(ctx context.Context, id string, keys map[learnKey]time.Duration, need time.Duration) error {
	m.mu.Lock()
	vs := m.vms[id]
	if vs == nil {
		m.mu.Unlock()
		return nil
	}
	now := m.clock()
	for k, exp := range vs.learned {
		// The kernel collects an expired element within about a second;
		// until then a plain add might find it, so it is kept a while.
		if now.Sub(exp) > expiredKeep {
			delete(vs.learned, k)
		}
	}
	add := map[learnKey]time.Duration{}
	for k, d := range keys {
		if exp, ok := vs.learned[k]; ok && exp.Sub(now) >= min(need, d) {
			continue
		}
		add[k] = d
	}
	var evict []learnKey
	live := 0
	for _, exp := range vs.learned {
		if exp.After(now) {
			live++
		}
	}
	if over := live + len(add) - maxLearned; over > 0 {
		var cands []learnKey
		for k, exp := range vs.learned {
			if _, adding := add[k]; !adding && exp.After(now) {
				cands = append(cands, k)
			}
		}
		slices.SortFunc(cands, func(a, b learnKey) int { return vs.learned[a].Compare(vs.learned[b]) })
		evict = cands[:min(over, len(cands))]
	}
	known, anyKnown := map[learnKey]bool{}, false
	for k := range add {
		_, known[k] = vs.learned[k]
		anyKnown = anyKnown || known[k]
	}
	m.mu.Unlock()
	if len(add) == 0 {
		return nil
	}
	l, err := m.layout()
	if err != nil {
		return err
	}
	if anyKnown && m.updates == 0 {
		m.probe(ctx, l)
	}
	replace := func(k learnKey) bool { return known[k] && m.updates != 1 }
	if err := m.apply(ctx, fmt.Sprintf("adding resolved addresses to vm %s's egress sets", id), learnScript(l.t(), objectsOf(id), add, replace, evict)); err != nil {
		return err
	}
	m.mu.Lock()
	if vs == m.vms[id] {
		for _, k := range evict {
			delete(vs.learned, k)
		}
		for k, d := range add {
			vs.learned[k] = now.Add(d)
		}
	}
	m.mu.Unlock()
	return nil
}

// expiredKeep is how long learn remembers an expired key as possibly
// still in its set.
const expiredKeep = 5 * time.Second

// probe finds out once whether re-adding an element updates its timeout
// (Linux 6.10 and later), so refreshing a learned address can skip the
// slower delete; on any failure it assumes not. The caller holds nftMu.
func (m *Manager) probe(ctx context.Context, l layout) {
	m.updates = -1
	create, readd, remove := probeScripts(l.t())
	defer m.apply(ctx, "removing the nft probe set", remove)
	if m.apply(ctx, "probing nft timeouts", create) != nil || m.apply(ctx, "probing nft timeouts", readd) != nil {
		return
	}
	out, err := m.runner().RunPrivileged(ctx, "nft", "-j", "list", "set", "ip", l.table, probeSet)
	if err != nil {
		return
	}
	if ok, err := probeUpdated(out); err == nil && ok {
		m.updates = 1
	}
	m.log().Debug("probed nft element timeouts", "add_updates_timeout", m.updates == 1)
}

// The dns.Filter side: banger's DNS server asks the manager about every
// query from a guest address outside the .vm zone.

var _ dns.Filter = (*Manager)(nil)

// Query implements dns.Filter: a guest without a policy, or with the
// default one, is forwarded as ever; in allow mode only allowed names are
// (others get NXDOMAIN), and their answers are checked so their addresses
// enter the VM's set before the guest sees them; in deny mode denied names
// get NXDOMAIN and their addresses are learned for the deny set.
func (m *Manager) Query(client netip.Addr, name string) dns.Decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.byIP[client]
	if vs == nil {
		return dns.Forward
	}
	p := vs.spec.policy
	chain := []string{name}
	switch p.Mode {
	case ModeAllow:
		if deniedName(p, chain) {
			m.refusedName(vs, name, ReasonDenied)
			return dns.Refuse
		}
		for _, e := range p.Allow {
			if e.MatchesName(name) {
				return dns.Check
			}
		}
		m.refusedName(vs, name, ReasonUnlisted)
		return dns.Refuse
	case ModeDeny:
		if deniedName(p, chain) {
			m.refusedName(vs, name, ReasonDenied)
			return dns.RefuseLearn
		}
		for _, e := range p.Deny {
			if e.IsDomain() {
				return dns.Check // a CNAME may lead to a denied name
			}
		}
	}
	return dns.Forward
}

// Answer implements dns.Filter: it puts the answer's addresses into the
// VM's sets (allowed names: the allow set, with a timeout from the TTL;
// denied names: the deny set) before the answer leaves, and refuses an
// answer whose CNAME chain reaches a denied name. An error (nft failed)
// makes the server answer SERVFAIL, so the guest never holds an address
// its set lacks.
func (m *Manager) Answer(client netip.Addr, name string, a dns.Answer) (dns.Verdict, error) {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	m.mu.Lock()
	vs := m.byIP[client]
	if vs == nil {
		m.mu.Unlock()
		return dns.Verdict{}, nil
	}
	id, p := vs.spec.id, vs.spec.policy
	chain := a.Names
	if len(chain) == 0 {
		chain = []string{name}
	}
	chain = chain[:min(len(chain), dns.MaxChain)]
	addrs := a.Addrs[:min(len(a.Addrs), dns.MaxAnswerAddrs)]
	keys := map[learnKey]time.Duration{}
	var v dns.Verdict
	switch p.Mode {
	case ModeAllow:
		allowed := false
		for _, e := range p.Allow {
			allowed = allowed || e.MatchesName(name)
		}
		if !allowed || deniedName(p, chain) {
			r := ReasonDenied
			if !allowed { // the policy changed since Query
				r = ReasonUnlisted
			}
			m.refusedName(vs, name, r)
			m.mu.Unlock()
			return dns.Verdict{Refuse: true}, nil
		}
		d := learnTimeout(a.TTL)
		for k := range allowKeys(p, name, addrs) {
			keys[k] = d
		}
		for k := range denyKeys(p, chain, addrs) {
			if k.proto != "" {
				keys[k] = denyTimeout(a.TTL)
			}
		}
		v.MaxTTL = uint32((MaxTimeout - grace) / time.Second)
	case ModeDeny:
		for k := range denyKeys(p, chain, addrs) {
			keys[k] = denyTimeout(a.TTL)
		}
		if deniedName(p, chain) {
			v.Refuse = true
			if !deniedName(p, []string{name}) {
				m.refusedName(vs, name, ReasonDenied) // through a CNAME
			}
		}
	default:
		m.mu.Unlock()
		return dns.Verdict{}, nil
	}
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	// The guest may cache the answer for its TTL (capped at MaxTTL): the
	// sets must hold its addresses at least that long, and a little more.
	need := min(time.Duration(a.TTL)*time.Second+grace, MaxTimeout)
	if err := m.learn(ctx, id, keys, need); err != nil {
		return dns.Verdict{}, err
	}
	return v, nil
}

// refusedName records a refused name; the caller holds mu.
func (m *Manager) refusedName(vs *vmState, name string, r Reason) {
	now := m.clock()
	name = strings.TrimSuffix(name, ".")
	vs.names++
	vs.recent.add(Denial{Time: now, Name: name, Reason: r})
	if len(vs.pending) < maxPending && !slices.Contains(vs.pending, name) {
		vs.pending = append(vs.pending, name)
	}
	vs.pendingN++
	if now.Sub(vs.lastLog) >= m.logEvery() {
		m.logDenials(vs, now)
	}
}

// Errors.

// ErrNoPolicy is Stats's error for a VM without rules in the table.
var ErrNoPolicy = errors.New("no egress policy in force")
