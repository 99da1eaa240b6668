package egress

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/runner/runnertest"
)

// fakeNFT is nft's state for the recording runner (runnertest): listings
// come from the test, scripts are recorded and succeed unless fail is set.
type fakeNFT struct {
	mu       sync.Mutex
	listing  []byte // nil: no table
	blisting []byte // the bridge table's; nil: none
	counters string
	seen     string
	fail     error
	probe    string // the probe set's listing
	scripts  []string
}

// runner answers nft from f's state; any other command fails.
func (f *fakeNFT) runner() *runnertest.Runner {
	r := &runnertest.Runner{}
	noTable := errors.New("nft -j list table: exit status 1: Error: No such file or directory")
	r.On("nft -j list table", func(argv []string) ([]byte, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		listing := f.listing
		if argv[4] == "bridge" {
			listing = f.blisting
		}
		if listing == nil {
			return nil, noTable
		}
		return listing, nil
	})
	r.On("nft -j list counters", func([]string) ([]byte, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return []byte(cmp.Or(f.counters, `{"nftables": []}`)), nil
	})
	r.On("nft -j list set", func(argv []string) ([]byte, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(argv) > 6 && argv[6] == probeSet {
			return []byte(cmp.Or(f.probe, `{"nftables": []}`)), nil
		}
		return []byte(cmp.Or(f.seen, `{"nftables": []}`)), nil
	})
	r.On("nft", func(argv []string) ([]byte, error) {
		if len(argv) != 2 {
			return nil, fmt.Errorf("unexpected nft %q", argv[1:])
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.scripts = append(f.scripts, argv[1])
		return nil, f.fail
	})
	return r
}

// taken returns the scripts run since the last call, without the probe's.
func (f *fakeNFT) taken() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []string
	for _, x := range f.scripts {
		if !strings.Contains(x, " "+probeSet) {
			s = append(s, x)
		}
	}
	f.scripts = nil
	return s
}

// fakeResolver answers from a map.
type fakeResolver map[string][]netip.Addr

func (r fakeResolver) Resolve(_ context.Context, name string) ([]netip.Addr, uint32, error) {
	a, ok := r[name]
	if !ok {
		return nil, 0, errors.New("no such name")
	}
	return a, 60, nil
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestManager(f *fakeNFT, c *clock) *Manager {
	return &Manager{R: f.runner(), Table: "banger_egress", Bridge: "banger0", Subnet: netip.MustParsePrefix("172.30.0.0/24"),
		Log: quiet(), now: c.now, Resolver: fakeResolver{"evil.example": {netip.MustParseAddr("198.51.100.7")}}}
}

var (
	vmIP    = netip.MustParseAddr("172.30.0.2")
	otherIP = netip.MustParseAddr("172.30.0.9")
	addr1   = netip.MustParseAddr("192.0.2.1")
	addr2   = netip.MustParseAddr("192.0.2.2")
	t0      = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ctx     = context.Background()
)

func TestApplyChecks(t *testing.T) {
	f := &fakeNFT{}
	m := newTestManager(f, &clock{t: t0})
	tests := []struct {
		vm   VM
		want string
	}{
		{VM{ID: "", IP: vmIP}, "vm id"},
		{VM{ID: "a b", IP: vmIP}, "vm id"},
		{VM{ID: "-x", IP: vmIP}, "vm id"},
		{VM{ID: strings.Repeat("a", 65), IP: vmIP}, "vm id"},
		{VM{ID: "vm1", IP: netip.MustParseAddr("10.0.0.2")}, "outside the guest subnet"},
		{VM{ID: "vm1"}, "outside the guest subnet"},
		{VM{ID: "vm1", IP: netip.MustParseAddr("172.30.0.1")}, "the bridge's own"},
		{VM{ID: "vm1", IP: vmIP, Policy: Policy{Mode: "bogus"}}, "is not default"},
		{VM{ID: "vm1", IP: vmIP}, "TAP device name"},
		{VM{ID: "vm1", IP: vmIP, TAP: `tap"x`}, "TAP device name"},
	}
	for _, tt := range tests {
		err := m.Apply(ctx, tt.vm)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "applying egress policy to vm ") {
			t.Errorf("Apply(%+v) = %v, want an error containing %q", tt.vm, err, tt.want)
		}
	}
	if s := f.taken(); len(s) != 0 {
		t.Errorf("refused Applys ran nft: %q", s)
	}
	bad := &Manager{R: f.runner(), Table: "bad table", Bridge: "banger0", Subnet: netip.MustParsePrefix("172.30.0.0/24")}
	if err := bad.Apply(ctx, VM{ID: "vm1", IP: vmIP, TAP: "bgtap-vm1"}); err == nil || !strings.Contains(err.Error(), "table name") {
		t.Errorf("Apply() with table %q = %v, want an error about it", bad.Table, err)
	}
}

func TestApplyScript(t *testing.T) {
	f := &fakeNFT{}
	c := &clock{t: t0}
	m := newTestManager(f, c)
	p := Policy{Mode: ModeDeny, Deny: mustParse(t, "evil.example,nowhere.example")}
	if err := m.Apply(ctx, VM{ID: "vm1", IP: vmIP, TAP: "bgtap-vm1", Policy: p}); err != nil {
		t.Fatal(err)
	}
	s := f.taken()
	if len(s) != 1 {
		t.Fatalf("Apply() ran %d nft scripts, want 1 transaction", len(s))
	}
	for _, want := range []string{
		"add table ip banger_egress",
		"add element ip banger_egress v_vm1_ddns { 198.51.100.7 timeout 300s }",
		`ip saddr 172.30.0.2 jump v_vm1_fwd comment "vm:vm1"`,
	} {
		if !strings.Contains(s[0], want) {
			t.Errorf("Apply() script lacks %q:\n%s", want, s[0])
		}
	}
	if got := m.Addrs(); len(got) != 1 || got["vm1"] != vmIP {
		t.Errorf("Addrs() = %v, want vm1 at %s", got, vmIP)
	}
	// nowhere.example did not resolve: it is tried again at the next tick.
	m.mu.Lock()
	refresh := m.vms["vm1"].denyRefresh
	m.mu.Unlock()
	if !refresh["nowhere.example"].Equal(t0.Add(DefaultInterval)) || !refresh["evil.example"].After(t0.Add(time.Minute)) {
		t.Errorf("deny refresh times = %v, want nowhere.example at the next tick and evil.example later", refresh)
	}

	// Another VM cannot take vm1's address.
	if err := m.Apply(ctx, VM{ID: "vm2", IP: vmIP, TAP: "bgtap-vm2"}); err == nil || !strings.Contains(err.Error(), "is vm vm1's") {
		t.Errorf("Apply(vm2 at vm1's address) = %v, want an error naming vm1", err)
	}

	// A failed transaction changes no state.
	f.fail = errors.New("nft: exit status 1")
	if err := m.Apply(ctx, VM{ID: "vm3", IP: otherIP, TAP: "bgtap-vm3"}); err == nil || !strings.Contains(err.Error(), "applying egress policy to vm vm3") {
		t.Errorf("Apply(vm3) with nft failing = %v, want the error", err)
	}
	if _, ok := m.Addrs()["vm3"]; ok {
		t.Errorf("Addrs() has vm3 after a failed Apply")
	}
	f.fail = nil
	f.taken()

	// Open removes: with no table there is nothing to delete.
	if err := m.Apply(ctx, VM{ID: "vm1", IP: vmIP, Policy: Open()}); err != nil {
		t.Fatal(err)
	}
	if s := f.taken(); len(s) != 0 {
		t.Errorf("Apply(open) with no table ran %q, want nothing", s)
	}
	if got := m.Addrs(); len(got) != 0 {
		t.Errorf("Addrs() after open = %v, want none", got)
	}
	if err := m.Remove(ctx, "vm1"); err != nil {
		t.Errorf("Remove() of a removed vm = %v, want nil", err)
	}
	if err := m.Remove(ctx, "a b"); err == nil {
		t.Errorf("Remove(%q) = nil, want an error", "a b")
	}
}

func TestReconcileScript(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "listing.json"))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(filepath.Join("testdata", "listing-bridge.json"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNFT{listing: b, blisting: bb}
	m := newTestManager(f, &clock{t: t0})
	m.Subnet = netip.MustParsePrefix("172.30.9.0/24")
	if err := m.Reconcile(ctx, []VM{{ID: "vm3", IP: netip.MustParseAddr("172.30.9.4"), TAP: "bgtap-vm3"}}); err != nil {
		t.Fatal(err)
	}
	s := f.taken()
	if len(s) != 1 {
		t.Fatalf("Reconcile() ran %d scripts, want 1 transaction", len(s))
	}
	for _, want := range []string{"delete chain ip banger_egress v_vm-1.a_fwd", "delete set ip banger_egress v_vm2_seen", "delete counter ip banger_egress v_vm2_host",
		"delete chain bridge banger_egress v_vm2_port", "delete counter bridge banger_egress v_vm-1.a_spoofed", "jump v_vm3_fwd", `iifname "bgtap-vm3" jump v_vm3_port`} {
		if !strings.Contains(s[0], want) {
			t.Errorf("Reconcile() script lacks %q:\n%s", want, s[0])
		}
	}
	if strings.Contains(s[0], "delete table") {
		t.Errorf("Reconcile() of a healthy table deletes it:\n%s", s[0])
	}
	// A table that is not as banger makes it is rebuilt whole.
	f.listing = []byte(strings.Replace(string(b), `"prio": -10`, `"prio": 0`, 1))
	if err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if s := f.taken(); len(s) != 1 || !strings.HasPrefix(s[0], "add table ip banger_egress\ndelete table ip banger_egress\nadd table bridge banger_egress\ndelete table bridge banger_egress\n") {
		t.Errorf("Reconcile() of a damaged table = %q, want a rebuild", s)
	}
	// So is an ip table without its bridge table.
	f.listing, f.blisting = b, nil
	if err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if s := f.taken(); len(s) != 1 || !strings.Contains(s[0], "delete table bridge banger_egress") {
		t.Errorf("Reconcile() without the bridge table = %q, want a rebuild", s)
	}
	same := netip.MustParseAddr("172.30.9.9")
	if err := m.Reconcile(ctx, []VM{{ID: "a", IP: same, TAP: "t1"}, {ID: "b", IP: same, TAP: "t2"}}); err == nil || !strings.Contains(err.Error(), "share address") {
		t.Errorf("Reconcile() of two vms at one address = %v, want an error", err)
	}
}

// applied returns a manager with vm1 (at vmIP) under p, and its fake.
func applied(t *testing.T, p Policy) (*Manager, *fakeNFT, *clock) {
	t.Helper()
	f := &fakeNFT{}
	c := &clock{t: t0}
	m := newTestManager(f, c)
	if err := m.Apply(ctx, VM{ID: "vm1", IP: vmIP, TAP: "bgtap-vm1", Policy: p}); err != nil {
		t.Fatal(err)
	}
	f.taken()
	return m, f, c
}

func TestQuery(t *testing.T) {
	allow := Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com,*.npmjs.org,gitlab.com:443"), Deny: mustParse(t, "bad.npmjs.org")}
	deny := Policy{Mode: ModeDeny, Deny: mustParse(t, "evil.example,*.evil.example")}
	denyAddrs := Policy{Mode: ModeDeny, Deny: mustParse(t, "203.0.113.0/24")}
	tests := []struct {
		p      Policy
		client netip.Addr
		name   string
		want   dns.Decision
		reason Reason // of the recorded denial, if any
	}{
		{allow, vmIP, "github.com.", dns.Check, 0},
		{allow, vmIP, "api.github.com.", dns.Refuse, ReasonUnlisted},
		{allow, vmIP, "registry.npmjs.org.", dns.Check, 0},
		{allow, vmIP, "npmjs.org.", dns.Refuse, ReasonUnlisted},
		{allow, vmIP, "bad.npmjs.org.", dns.Refuse, ReasonDenied},
		{allow, vmIP, "gitlab.com.", dns.Check, 0},
		{allow, otherIP, "anything.example.", dns.Forward, 0},
		{deny, vmIP, "evil.example.", dns.RefuseLearn, ReasonDenied},
		{deny, vmIP, "www.evil.example.", dns.RefuseLearn, ReasonDenied},
		{deny, vmIP, "good.example.", dns.Check, 0},
		{denyAddrs, vmIP, "good.example.", dns.Forward, 0},
		{Policy{}, vmIP, "good.example.", dns.Forward, 0},
	}
	for _, tt := range tests {
		m, _, _ := applied(t, tt.p)
		if got := m.Query(tt.client, tt.name); got != tt.want {
			t.Errorf("Query(%s, %s) under %s = %d, want %d", tt.client, tt.name, tt.p, got, tt.want)
		}
		st, err := m.Stats(ctx, "vm1")
		if err != nil {
			t.Fatal(err)
		}
		wantN := 0
		if tt.reason != 0 {
			wantN = 1
		}
		if int(st.NamesRefused) != wantN || (wantN == 1 && !hasDenial(st.Recent, strings.TrimSuffix(tt.name, "."), tt.reason)) {
			t.Errorf("after Query(%s, %s) under %s: names refused %d, recent %v; want %d with reason %s", tt.client, tt.name, tt.p, st.NamesRefused, st.Recent, wantN, tt.reason)
		}
	}
}

func TestAnswer(t *testing.T) {
	allow := Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com,gitlab.com:443/tcp,*.npmjs.org"), Deny: mustParse(t, "github.com:22/tcp,cdn.evil.example")}
	deny := Policy{Mode: ModeDeny, Deny: mustParse(t, "evil.example,smtp.example:25")}
	tests := []struct {
		p       Policy
		name    string
		a       dns.Answer
		verdict dns.Verdict
		elems   []string // elements the script adds
	}{
		{allow, "github.com.", dns.Answer{Names: []string{"github.com."}, Addrs: []netip.Addr{addr1, addr2}, TTL: 60},
			dns.Verdict{MaxTTL: 3598}, []string{"v_vm1_adns { 192.0.2.1 timeout 62s }", "v_vm1_adns { 192.0.2.2 timeout 62s }",
				"v_vm1_ddnsp { 192.0.2.1 . tcp . 22 timeout 300s }", "v_vm1_ddnsp { 192.0.2.2 . tcp . 22 timeout 300s }"}},
		{allow, "gitlab.com.", dns.Answer{Names: []string{"gitlab.com."}, Addrs: []netip.Addr{addr1}, TTL: 7200},
			dns.Verdict{MaxTTL: 3598}, []string{"v_vm1_adnsp { 192.0.2.1 . tcp . 443 timeout 3600s }"}},
		{allow, "registry.npmjs.org.", dns.Answer{Names: []string{"registry.npmjs.org.", "cdn.evil.example."}, Addrs: []netip.Addr{addr1}, TTL: 60},
			dns.Verdict{Refuse: true}, nil},
		{allow, "other.example.", dns.Answer{Names: []string{"other.example."}, Addrs: []netip.Addr{addr1}, TTL: 60},
			dns.Verdict{Refuse: true}, nil},
		{deny, "good.example.", dns.Answer{Names: []string{"good.example."}, Addrs: []netip.Addr{addr1}, TTL: 60}, dns.Verdict{}, nil},
		{deny, "www.example.", dns.Answer{Names: []string{"www.example.", "evil.example."}, Addrs: []netip.Addr{addr1}, TTL: 60},
			dns.Verdict{Refuse: true}, []string{"v_vm1_ddns { 192.0.2.1 timeout 300s }"}},
		{deny, "smtp.example.", dns.Answer{Names: []string{"smtp.example."}, Addrs: []netip.Addr{addr2}, TTL: 3000},
			dns.Verdict{}, []string{"v_vm1_ddnsp { 192.0.2.2 . tcp . 25 timeout 3002s }", "v_vm1_ddnsp { 192.0.2.2 . udp . 25 timeout 3002s }"}},
		{Policy{}, "good.example.", dns.Answer{Names: []string{"good.example."}, Addrs: []netip.Addr{addr1}, TTL: 60}, dns.Verdict{}, nil},
	}
	for _, tt := range tests {
		m, f, _ := applied(t, tt.p)
		v, err := m.Answer(vmIP, tt.name, tt.a)
		if err != nil || v != tt.verdict {
			t.Errorf("Answer(%s, %v) under %s = %+v, %v; want %+v", tt.name, tt.a, tt.p, v, err, tt.verdict)
		}
		var got []string
		for _, s := range f.taken() {
			for _, line := range strings.Split(s, "\n") {
				if rest, ok := strings.CutPrefix(line, "add element ip banger_egress "); ok && !slices.Contains(got, rest) {
					got = append(got, rest)
				}
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, tt.elems) {
			t.Errorf("Answer(%s, %v) under %s added %q, want %q", tt.name, tt.a, tt.p, got, tt.elems)
		}
	}
	// An unknown client passes untouched.
	m, f, _ := applied(t, allow)
	if v, err := m.Answer(otherIP, "github.com.", dns.Answer{Addrs: []netip.Addr{addr1}}); err != nil || v != (dns.Verdict{}) || len(f.taken()) != 0 {
		t.Errorf("Answer() for an unknown client = %+v, %v; want a pass and no nft", v, err)
	}
	// nft failing is an error, so the server answers SERVFAIL.
	f.fail = errors.New("nft: exit status 1")
	if _, err := m.Answer(vmIP, "github.com.", dns.Answer{Names: []string{"github.com."}, Addrs: []netip.Addr{addr1}, TTL: 60}); err == nil {
		t.Errorf("Answer() with nft failing = nil error, want one")
	}
}

func TestLearnSkipsAndEvicts(t *testing.T) {
	allow := Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com")}
	m, f, c := applied(t, allow)
	ans := func(ttl uint32) int {
		t.Helper()
		if _, err := m.Answer(vmIP, "github.com.", dns.Answer{Names: []string{"github.com."}, Addrs: []netip.Addr{addr1}, TTL: ttl}); err != nil {
			t.Fatal(err)
		}
		return len(f.taken())
	}
	if n := ans(300); n != 1 {
		t.Errorf("first answer ran %d scripts, want 1", n)
	}
	c.add(10 * time.Second)
	if n := ans(290); n != 0 {
		t.Errorf("an answer the set already covers ran %d scripts, want 0", n)
	}
	if n := ans(600); n != 1 {
		t.Errorf("an answer outliving the set's element ran %d scripts, want 1", n)
	}
	if m.updates != -1 {
		t.Errorf("after a refresh with a probe that failed, updates = %d, want -1 (delete and add)", m.updates)
	}
	c.add(time.Hour)
	if n := ans(300); n != 1 {
		t.Errorf("an answer after the element expired ran %d scripts, want 1", n)
	}
	// A TTL under the 30 s floor: the element covers the guest's 5 s cache
	// for 25 s more, so the next answers need no nft.
	c.add(time.Hour)
	if n := ans(5); n != 1 {
		t.Errorf("a 5 s answer ran %d scripts, want 1", n)
	}
	c.add(20 * time.Second)
	if n := ans(5); n != 0 {
		t.Errorf("a 5 s answer 20 s into a 30 s element ran %d scripts, want 0", n)
	}
	c.add(5 * time.Second)
	if n := ans(5); n != 1 {
		t.Errorf("an answer after the element expired ran %d scripts, want 1", n)
	}

	// At maxLearned, the soonest to expire make room.
	keys := map[learnKey]time.Duration{}
	for i := range maxLearned - 1 {
		keys[learnKey{addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}] = time.Hour
	}
	m.nftMu.Lock()
	if err := m.learn(ctx, "vm1", keys, time.Hour); err != nil {
		t.Fatal(err)
	}
	f.taken()
	if err := m.learn(ctx, "vm1", map[learnKey]time.Duration{{addr: addr2}: time.Hour}, time.Hour); err != nil {
		t.Fatal(err)
	}
	m.nftMu.Unlock()
	s := f.taken()
	if len(s) != 1 || !strings.HasSuffix(s[0], "delete element ip banger_egress v_vm1_adns { 192.0.2.1 }") || strings.Count(s[0], "timeout 1s") != 1 {
		t.Errorf("learning past maxLearned = %q, want 192.0.2.1 (the soonest to expire) evicted", s)
	}
	if st, err := m.Stats(ctx, "vm1"); err != nil || st.Learned != maxLearned {
		t.Errorf("Stats().Learned = %d, %v; want %d", st.Learned, err, maxLearned)
	}
}

func TestRing(t *testing.T) {
	var r ring
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	for i := range RecentDenials + 4 {
		r.add(Denial{Time: at(i), Name: fmt.Sprintf("n%d.example", i), Reason: ReasonUnlisted})
	}
	got := r.list()
	if len(got) != RecentDenials || got[0].Name != fmt.Sprintf("n%d.example", RecentDenials+3) || got[len(got)-1].Name != "n4.example" {
		t.Fatalf("ring after %d adds = %v, want the newest %d, newest first", RecentDenials+4, got, RecentDenials)
	}
	// The same thing again moves to the front; an older sighting changes nothing.
	r.add(Denial{Time: at(100), Name: "n5.example", Reason: ReasonUnlisted})
	r.add(Denial{Time: at(1), Name: "n6.example", Reason: ReasonUnlisted})
	got = r.list()
	if got[0].Name != "n5.example" || len(got) != RecentDenials || slices.IndexFunc(got, func(d Denial) bool { return d.Name == "n6.example" }) != len(got)-2 {
		t.Errorf("ring = %v, want n5 first and n6 left where it was", got)
	}
	// A destination refused for another reason is another entry.
	r.add(Denial{Time: at(200), Addr: "192.0.2.1:80/tcp", Reason: ReasonPrivate})
	r.add(Denial{Time: at(201), Addr: "192.0.2.1:80/tcp", Reason: ReasonDenied})
	if got := r.list(); got[0].Reason != ReasonDenied || got[1].Reason != ReasonPrivate {
		t.Errorf("ring = %v, want both reasons for 192.0.2.1:80/tcp", got[:2])
	}
}

// TestHarvestAndLog reads counters and the seen set (as the real nft
// lists them) and logs them, at most once per LogEvery.
func TestHarvestAndLog(t *testing.T) {
	m, f, c := applied(t, Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com")})
	var buf strings.Builder
	var mu sync.Mutex
	m.Log = slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) }), nil))
	counters := func(private, host uint64) string {
		return fmt.Sprintf(`{"nftables": [{"metainfo": {}},
			{"counter": {"family": "ip", "table": "banger_egress", "name": "v_vm1_private", "packets": %d, "bytes": %d}},
			{"counter": {"family": "ip", "table": "banger_egress", "name": "v_vm1_host", "packets": %d, "bytes": 60}},
			{"counter": {"family": "bridge", "table": "banger_egress", "name": "v_vm1_spoofed", "packets": 2, "bytes": 120}},
			{"counter": {"family": "ip", "table": "other", "name": "v_vm1_denied", "packets": 5, "bytes": 1}},
			{"counter": {"family": "ip", "table": "banger_egress", "name": "v_vm9_host", "packets": 99, "bytes": 1}}]}`, private, private*60, host)
	}
	f.counters = counters(3, 1)
	f.seen = `{"nftables": [{"set": {"name": "v_vm1_seen", "elem": [
		{"elem": {"val": {"concat": ["10.20.0.5", "tcp", 80, 3]}, "expires": 3590}},
		{"elem": {"val": {"concat": ["172.30.0.1", "tcp", 22, 5]}, "expires": 3000}},
		{"elem": {"val": {"concat": ["10.20.0.6", "tcp", 80, 9]}, "expires": 3000}},
		{"elem": {"val": "garbage"}}]}}]}`
	m.tick(ctx)
	st, err := m.Stats(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := []Denial{
		{Time: t0.Add(-10 * time.Second), Addr: "10.20.0.5:80/tcp", Reason: ReasonPrivate},
		{Time: t0.Add(-600 * time.Second), Addr: "172.30.0.1:22/tcp", Reason: ReasonHost},
	}
	if st.Refused["private"] != (Counter{3, 180}) || st.Refused["host"].Packets != 1 || st.Refused["spoofed"].Packets != 2 || st.Refused["denied"].Packets != 0 || fmt.Sprint(st.Recent) != fmt.Sprint(want) {
		t.Errorf("Stats() = %+v, want private 3/180, host 1, spoofed 2, denied 0 and recent %v", st, want)
	}
	lines := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(buf.String(), "egress refused")
	}
	if lines() != 1 || !strings.Contains(buf.String(), `by_reason="private=3 host=1 spoofed=2"`) {
		t.Errorf("log after the first tick = %q, want one line with private=3 host=1 spoofed=2", buf.String())
	}
	// More refusals within LogEvery wait for the next line.
	f.counters = counters(10, 1)
	m.Query(vmIP, "other.example.")
	m.tick(ctx)
	if lines() != 1 {
		t.Errorf("log within LogEvery has %d lines, want 1", lines())
	}
	c.add(DefaultLogEvery)
	m.tick(ctx)
	if lines() != 2 || !strings.Contains(buf.String(), `by_reason=private=7`) && !strings.Contains(buf.String(), `by_reason="private=7"`) || !strings.Contains(buf.String(), "names=[other.example]") {
		t.Errorf("log after LogEvery = %q, want a second line with private=7 and other.example", buf.String())
	}
	c.add(DefaultLogEvery)
	m.tick(ctx)
	if lines() != 2 {
		t.Errorf("log with nothing new has %d lines, want 2", lines())
	}
	if _, err := m.Stats(ctx, "vm9"); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("Stats(vm9) = %v, want ErrNoPolicy", err)
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// TestRefreshDenied looks denied names up again when their time comes.
func TestRefreshDenied(t *testing.T) {
	m, f, c := applied(t, Policy{Mode: ModeDeny, Deny: mustParse(t, "evil.example")})
	m.tick(ctx)
	if s := f.taken(); len(s) != 0 {
		t.Errorf("tick before the refresh time ran %q, want nothing", s)
	}
	m.Resolver = fakeResolver{"evil.example": {netip.MustParseAddr("198.51.100.8")}}
	c.add(5 * time.Minute)
	m.tick(ctx)
	s := f.taken()
	if len(s) != 1 || !strings.Contains(s[0], "v_vm1_ddns { 198.51.100.8 timeout 300s }") {
		t.Errorf("tick after the refresh time ran %q, want the new address added", s)
	}
}

// TestRefreshPath: a refresh deletes and re-adds the element unless the
// probe showed that "add" updates timeouts; new keys are always plain adds.
func TestRefreshPath(t *testing.T) {
	for _, updates := range []bool{false, true} {
		m, f, c := applied(t, Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com")})
		if updates {
			f.probe = `{"nftables": [{"set": {"name": "probe", "elem": [{"elem": {"val": "0.0.0.1", "timeout": 1000, "expires": 999}}]}}]}`
		}
		answer := func(ttl uint32) string {
			if _, err := m.Answer(vmIP, "github.com.", dns.Answer{Names: []string{"github.com."}, Addrs: []netip.Addr{addr1}, TTL: ttl}); err != nil {
				t.Fatal(err)
			}
			return strings.Join(f.taken(), "\n")
		}
		if s := answer(60); strings.Contains(s, "delete") {
			t.Errorf("updates %v: a new address = %q, want a plain add", updates, s)
		}
		c.add(50 * time.Second)
		if s := answer(60); strings.Contains(s, "delete") == updates {
			t.Errorf("updates %v: a refresh = %q, want delete %v", updates, s, !updates)
		}
		c.add(time.Hour)
		if s := answer(60); strings.Contains(s, "delete") {
			t.Errorf("updates %v: an address expired long ago = %q, want a plain add", updates, s)
		}
	}
}
