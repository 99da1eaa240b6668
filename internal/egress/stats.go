package egress

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Bounds on what a VM's denials keep.
const (
	// RecentDenials is how many refused names and destinations Stats
	// reports, newest first.
	RecentDenials = 16
	maxPending    = 5
)

// Denial is one refused name or destination.
type Denial struct {
	// Time is when it was last refused (for a destination, to the second).
	Time time.Time `json:"time"`
	// Name is a refused DNS name; empty for a destination.
	Name string `json:"name,omitempty"`
	// Addr is a refused destination ("198.51.100.7:443/tcp"); empty for a name.
	Addr   string `json:"addr,omitempty"`
	Reason Reason `json:"reason"`
}

func (d Denial) key() string { return d.Name + "|" + d.Addr + "|" + d.Reason.String() }

// String is the denial as a log line shows it.
func (d Denial) String() string {
	what := d.Name
	if what == "" {
		what = d.Addr
	}
	return what + " (" + d.Reason.String() + ")"
}

// ring keeps the latest RecentDenials denials, newest first, one per name
// or destination and reason.
type ring struct {
	items []Denial
}

// add records d, replacing an older record of the same thing; a record
// that is not newer than the one kept changes nothing.
func (r *ring) add(d Denial) {
	k := d.key()
	if i := slices.IndexFunc(r.items, func(x Denial) bool { return x.key() == k }); i >= 0 {
		if !d.Time.After(r.items[i].Time) {
			return
		}
		r.items = slices.Delete(r.items, i, i+1)
	}
	i, _ := slices.BinarySearchFunc(r.items, d, func(x, d Denial) int { return d.Time.Compare(x.Time) })
	r.items = slices.Insert(r.items, i, d)
	if len(r.items) > RecentDenials {
		r.items = r.items[:RecentDenials]
	}
}

func (r *ring) list() []Denial { return slices.Clone(r.items) }

// Stats is what a VM's policy refused, for `vm show`.
type Stats struct {
	Policy Policy `json:"policy"`
	// Refused counts the packets and bytes dropped, by reason ("denied",
	// "resolver", "private", "unlisted", "host", "spoofed").
	Refused map[string]Counter `json:"refused"`
	// NamesRefused counts DNS questions answered NXDOMAIN by the policy.
	NamesRefused uint64 `json:"names_refused"`
	// Recent are the latest refused names and destinations, newest first.
	Recent []Denial `json:"recent"`
	// Learned is how many addresses banger's DNS put in the VM's sets that
	// have not expired.
	Learned int `json:"learned"`
}

// Stats reads a VM's counters and recently refused destinations from the
// table. A VM without rules (no NAT, ModeOpen, stopped) gets ErrNoPolicy.
func (m *Manager) Stats(ctx context.Context, id string) (Stats, error) {
	m.mu.Lock()
	_, ok := m.vms[id]
	m.mu.Unlock()
	if !ok {
		return Stats{}, fmt.Errorf("reading egress counters of vm %s: %w", id, ErrNoPolicy)
	}
	if err := m.harvest(ctx, []string{id}, true); err != nil {
		return Stats{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.vms[id]
	if vs == nil {
		return Stats{}, fmt.Errorf("reading egress counters of vm %s: %w", id, ErrNoPolicy)
	}
	st := Stats{Policy: vs.spec.policy, Refused: map[string]Counter{}, NamesRefused: vs.names, Recent: vs.recent.list()}
	for _, r := range Reasons {
		st.Refused[r.String()] = vs.counters[r]
	}
	now := m.clock()
	for _, exp := range vs.learned {
		if exp.After(now) {
			st.Learned++
		}
	}
	return st, nil
}

// counterListing is `nft -j list counters table` output.
type counterListing struct {
	Nftables []struct {
		Counter *struct {
			Family  string `json:"family"`
			Table   string `json:"table"`
			Name    string `json:"name"`
			Packets uint64 `json:"packets"`
			Bytes   uint64 `json:"bytes"`
		} `json:"counter"`
	} `json:"nftables"`
}

// setListing is `nft -j list set` output.
type setListing struct {
	Nftables []struct {
		Set *struct {
			Elem []json.RawMessage `json:"elem"`
		} `json:"set"`
	} `json:"nftables"`
}

// harvest reads the counters of all VMs and, for the given ones whose
// counters grew (or all given, with force), their seen sets, and records
// the destinations refused in their rings. Nil ids means every VM.
func (m *Manager) harvest(ctx context.Context, ids []string, force bool) error {
	// One listing of every table's counters, of which the manager reads
	// its two tables' (the names do not repeat between them).
	out, err := m.runner().RunPrivileged(ctx, "nft", "-j", "list", "counters")
	if err != nil {
		return fmt.Errorf("reading egress counters: %w", err)
	}
	var cl counterListing
	if err := json.Unmarshal(out, &cl); err != nil {
		return fmt.Errorf("reading egress counters: parsing nft json: %w", err)
	}
	counts := map[string]Counter{}
	for _, o := range cl.Nftables {
		if c := o.Counter; c != nil && c.Table == m.Table && (c.Family == "ip" || c.Family == "bridge") {
			counts[c.Name] = Counter{c.Packets, c.Bytes}
		}
	}
	m.mu.Lock()
	if ids == nil {
		ids = slices.Sorted(mapKeys(m.vms))
	}
	var read []string
	for _, id := range ids {
		vs := m.vms[id]
		if vs == nil {
			continue
		}
		o := objectsOf(id)
		grew := false
		for _, r := range Reasons {
			c, ok := counts[o.counter(r)]
			if !ok {
				continue
			}
			if c.Packets != vs.counters[r].Packets {
				grew = true
			}
			vs.counters[r] = c
		}
		if grew || force {
			read = append(read, id)
		}
	}
	m.mu.Unlock()
	for _, id := range read {
		out, err := m.runner().RunPrivileged(ctx, "nft", "-j", "list", "set", "ip", m.Table, objectsOf(id).seen)
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				continue // removed meanwhile
			}
			return fmt.Errorf("reading vm %s's refused destinations: %w", id, err)
		}
		var sl setListing
		if err := json.Unmarshal(out, &sl); err != nil {
			return fmt.Errorf("reading vm %s's refused destinations: parsing nft json: %w", id, err)
		}
		now := m.clock()
		m.mu.Lock()
		if vs := m.vms[id]; vs != nil {
			for _, o := range sl.Nftables {
				if o.Set == nil {
					continue
				}
				for _, raw := range o.Set.Elem {
					e, ok := parseElement(raw)
					if !ok || e.proto == "" || e.mark == 0 || e.mark > uint32(ReasonHost) {
						continue
					}
					// The seen set refreshes an element's timeout at every
					// refused packet, so its age is the timeout less what is left.
					at := now.Add(-(seenTimeout - e.expires)).Truncate(time.Second)
					vs.recent.add(Denial{Time: at, Addr: fmt.Sprintf("%s:%d/%s", e.addr, e.port, e.proto), Reason: Reason(e.mark)})
				}
			}
		}
		m.mu.Unlock()
	}
	return nil
}

// Run refreshes the addresses of denied names before they expire, reads
// the counters and logs what each VM had refused (at most one line per VM
// per LogEvery), every Interval until ctx ends. The daemon runs it for its
// lifetime.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.interval())
	defer t.Stop()
	for {
		m.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick is one round of Run.
func (m *Manager) tick(ctx context.Context) {
	if err := m.refreshDenied(ctx); err != nil {
		m.log().Warn("refreshing denied names", "err", err)
	}
	if err := m.harvest(ctx, nil, false); err != nil {
		m.log().Warn("reading egress counters", "err", err)
	}
	now := m.clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range slices.Sorted(mapKeys(m.vms)) {
		if vs := m.vms[id]; now.Sub(vs.lastLog) >= m.logEvery() {
			m.logDenials(vs, now)
		}
	}
}

// refreshDenied looks up again the denied names whose time has come and
// adds their addresses to the deny sets.
func (m *Manager) refreshDenied(ctx context.Context) error {
	now := m.clock()
	var specs []spec
	m.mu.Lock()
	due := map[string][]string{}
	for id, vs := range m.vms {
		for name, at := range vs.denyRefresh {
			if !at.After(now) {
				due[id] = append(due[id], name)
			}
		}
		if len(due[id]) > 0 {
			s := vs.spec
			s.policy.Deny = slices.DeleteFunc(slices.Clone(s.policy.Deny), func(e Entry) bool {
				return !e.IsDomain() || !slices.Contains(due[id], e.Domain)
			})
			specs = append(specs, s)
		}
	}
	m.mu.Unlock()
	if len(specs) == 0 {
		return nil
	}
	keys, refresh := m.resolveDenied(ctx, specs)
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	var errs []error
	for _, s := range specs {
		m.mu.Lock()
		vs := m.vms[s.id]
		if vs != nil {
			for name, at := range refresh[s.id] {
				if _, ok := vs.denyRefresh[name]; ok {
					vs.denyRefresh[name] = at
				}
			}
		}
		m.mu.Unlock()
		if vs == nil || vs.spec.policy.Mode != ModeDeny {
			continue
		}
		if err := m.learn(ctx, s.id, keys[s.id], MaxTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// logDenials writes one line about what vs refused since its last line,
// if anything; the caller holds mu.
func (m *Manager) logDenials(vs *vmState, now time.Time) {
	var parts []string
	var packets uint64
	for _, r := range Reasons {
		d := vs.counters[r].Packets - vs.logged[r].Packets
		if vs.counters[r].Packets < vs.logged[r].Packets {
			d = vs.counters[r].Packets // reset meanwhile
		}
		if d > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r, d))
			packets += d
		}
	}
	if packets == 0 && vs.pendingN == 0 {
		return
	}
	var dests []string
	for _, d := range vs.recent.items {
		if d.Addr != "" && d.Time.After(vs.lastLog) && len(dests) < maxPending {
			dests = append(dests, d.String())
		}
	}
	m.log().Info("egress refused", "vm", vs.spec.id, "policy", string(vs.spec.policy.Mode),
		"packets", packets, "by_reason", strings.Join(parts, " "), "destinations", dests,
		"names_refused", vs.pendingN, "names", vs.pending)
	vs.lastLog = now
	vs.logged = maps(vs.counters)
	vs.pending, vs.pendingN = nil, 0
}

// Addrs returns the addresses of VMs with a policy, by VM id, for tests and
// `banger doctor`.
func (m *Manager) Addrs() map[string]netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]netip.Addr{}
	for id, vs := range m.vms {
		out[id] = vs.spec.ip
	}
	return out
}
