package egress

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden nft scripts in testdata")

var testLayout = layout{table: "banger_u1000_egress", bridge: "banger1000", gateway: netip.MustParseAddr("172.30.236.1"), dnsPort: 10053}

func testSpec(t *testing.T, id string, mode Mode, allow, deny string) spec {
	t.Helper()
	return spec{id: id, ip: netip.MustParseAddr("172.30.236.2"), tap: "bgt1000-" + id[:min(len(id), 7)], policy: Policy{Mode: mode, Allow: mustParse(t, allow), Deny: mustParse(t, deny)}}
}

// TestScriptGolden compares the scripts a VM gets with testdata; run with
// -update to rewrite them after a deliberate change (and check the diff).
func TestScriptGolden(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		file    string
		s       spec
		learned map[learnKey]time.Duration
	}{
		{"default.nft", testSpec(t, "0a1b2c3d4e5f", ModeDefault, "", ""), nil},
		{"allow.nft", testSpec(t, "0a1b2c3d4e5f", ModeAllow, "github.com,*.github.com,github.com:22/tcp,10.1.0.0/16,10.1.2.0/24,192.0.2.53:53", "gist.github.com,github.com:9418"), nil},
		{"deny.nft", testSpec(t, "0a1b2c3d4e5f", ModeDeny, "10.5.0.0/16:5432/tcp", "evil.example,*.evil.example,203.0.113.0/24:25"),
			map[learnKey]time.Duration{{deny: true, addr: a("198.51.100.7")}: 5 * time.Minute, {deny: true, addr: a("198.51.100.8")}: time.Hour}},
	}
	for _, tt := range tests {
		got := strings.Join(append(testLayout.baseScript(), testLayout.createScript(tt.s, 0xbeef, nil, learnScript(testLayout.t(), objectsOf(tt.s.id), tt.learned, nil, nil))...), "\n") + "\n"
		path := filepath.Join("testdata", tt.file)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v: run go test -run TestScriptGolden -update", err)
		}
		if got != string(want) {
			t.Errorf("script for %s = \n%s\nwant (%s)\n%s", tt.s.policy, got, path, want)
		}
	}
}

func TestCreateScriptRefills(t *testing.T) {
	s := testSpec(t, "vm1", ModeAllow, "github.com", "")
	have := &vmListing{id: "vm1", jumps: []jump{{"forward", 7}, {"input", 9}},
		chains: map[string]bool{"v_vm1_fwd": true, "v_vm1_in": true, "v_vm1_refuse": true},
		sets:   map[string]bool{"v_vm1_adns": true, "v_vm1_seen": true}}
	script := testLayout.createScript(s, 1, have, nil)
	joined := strings.Join(script, "\n")
	for _, want := range []string{
		"delete rule ip banger_u1000_egress forward handle 7",
		"delete rule ip banger_u1000_egress input handle 9",
		"flush chain ip banger_u1000_egress v_vm1_fwd",
		"flush chain ip banger_u1000_egress v_vm1_refuse",
		"flush set ip banger_u1000_egress v_vm1_adns",
	} {
		if !slices.Contains(script, want) {
			t.Errorf("createScript over an existing vm lacks %q:\n%s", want, joined)
		}
	}
	for _, not := range []string{"flush set ip banger_u1000_egress v_vm1_seen", "flush set ip banger_u1000_egress v_vm1_anet", "delete counter"} {
		if strings.Contains(joined, not) {
			t.Errorf("createScript over an existing vm has %q (seen and counters keep counting; anet does not exist yet):\n%s", not, joined)
		}
	}
	// The jumps go last, after everything they point at.
	if !strings.Contains(script[len(script)-3], "jump v_vm1_fwd") || !strings.Contains(script[len(script)-2], "jump v_vm1_in") || !strings.Contains(script[len(script)-1], "jump v_vm1_port") {
		t.Errorf("createScript does not end with the jumps:\n%s", joined)
	}
}

func TestRemoveScript(t *testing.T) {
	have := &vmListing{id: "vm1", jumps: []jump{{"forward", 7}},
		chains:   map[string]bool{"v_vm1_fwd": true, "v_vm1_refuse": true},
		sets:     map[string]bool{"v_vm1_seen": true, "v_vm1_adns": true},
		counters: map[string]Counter{"v_vm1_host": {}}, bjumps: []jump{{"prerouting", 3}}, bchain: true, bcounter: true}
	got := testLayout.removeScript(have)
	want := []string{
		"delete rule ip banger_u1000_egress forward handle 7",
		"delete rule bridge banger_u1000_egress prerouting handle 3",
		"flush chain bridge banger_u1000_egress v_vm1_port",
		"delete chain bridge banger_u1000_egress v_vm1_port",
		"delete counter bridge banger_u1000_egress v_vm1_spoofed",
		"flush chain ip banger_u1000_egress v_vm1_fwd",
		"flush chain ip banger_u1000_egress v_vm1_refuse",
		"delete chain ip banger_u1000_egress v_vm1_fwd",
		"delete chain ip banger_u1000_egress v_vm1_refuse",
		"delete set ip banger_u1000_egress v_vm1_adns",
		"delete set ip banger_u1000_egress v_vm1_seen",
		"delete counter ip banger_u1000_egress v_vm1_host",
	}
	if !slices.Equal(got, want) {
		t.Errorf("removeScript() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNetElements(t *testing.T) {
	tests := []struct {
		list        string
		nets, ports []string
	}{
		{"", nil, nil},
		{"github.com,github.com:443", nil, nil},
		{"10.1.0.0/16,10.1.2.0/24,10.1.0.0/24,192.0.2.1", []string{"10.1.0.0/16", "192.0.2.1"}, nil},
		{"10.2.3.0/24,10.0.0.0/8", []string{"10.0.0.0/8"}, nil},
		{"0.0.0.0/0,10.0.0.0/8", []string{"0.0.0.0/0"}, nil},
		{"10.0.0.0/8:5432/tcp,10.1.0.0/16:5432/tcp,10.1.0.0/16:5432/udp", nil, []string{"10.0.0.0/8 . tcp . 5432", "10.1.0.0/16 . udp . 5432"}},
		{"192.0.2.53:53", nil, []string{"192.0.2.53 . tcp . 53", "192.0.2.53 . udp . 53"}},
		{"10.0.0.0/8,10.1.0.0/16:22/tcp", []string{"10.0.0.0/8"}, []string{"10.1.0.0/16 . tcp . 22"}},
	}
	for _, tt := range tests {
		nets, ports := netElements(mustParse(t, tt.list))
		if !slices.Equal(nets, tt.nets) || !slices.Equal(ports, tt.ports) {
			t.Errorf("netElements(%q) = %q, %q; want %q, %q", tt.list, nets, ports, tt.nets, tt.ports)
		}
	}
}

func TestFingerprint(t *testing.T) {
	base := testSpec(t, "vm1", ModeAllow, "github.com", "")
	fp := testLayout.fingerprint(base)
	if len(fp) != 16 || testLayout.fingerprint(base) != fp {
		t.Fatalf("fingerprint() = %q, want 16 stable hex digits", fp)
	}
	other := []spec{
		testSpec(t, "vm1", ModeAllow, "github.com,gitlab.com", ""),
		testSpec(t, "vm1", ModeDeny, "", "github.com"),
		testSpec(t, "vm2", ModeAllow, "github.com", ""),
		{id: "vm1", ip: netip.MustParseAddr("172.30.236.3"), tap: base.tap, policy: base.policy},
		{id: "vm1", ip: base.ip, tap: "bgt1000-other", policy: base.policy},
	}
	for _, s := range other {
		if got := testLayout.fingerprint(s); got == fp {
			t.Errorf("fingerprint(%s %s %s) = %s, the same as for %s %s %s", s.id, s.ip, s.policy, got, base.id, base.ip, base.policy)
		}
	}
	l2 := testLayout
	l2.dnsPort = 0
	if l2.fingerprint(base) == fp {
		t.Errorf("fingerprint() does not change with the DNS port")
	}
}

func TestParseComment(t *testing.T) {
	tests := []struct {
		in  string
		fp  string
		gen uint16
		ok  bool
	}{
		{ruleComment("0123456789abcdef", 0xbeef), "0123456789abcdef", 0xbeef, true},
		{"banger:egress fp=0123456789abcdef gen=0001", "0123456789abcdef", 1, true},
		{"banger:egress fp=0123456789abcdef gen=1", "", 0, false},
		{"banger:egress fp=0123456789ABCDEF gen=0001", "", 0, false},
		{"vm:x", "", 0, false},
		{"", "", 0, false},
	}
	for _, tt := range tests {
		fp, gen, ok := parseComment(tt.in)
		if fp != tt.fp || gen != tt.gen || ok != tt.ok {
			t.Errorf("parseComment(%q) = %q, %#x, %v; want %q, %#x, %v", tt.in, fp, gen, ok, tt.fp, tt.gen, tt.ok)
		}
	}
}

// TestParseListing reads what the real nft 1.0.6 listed for the scripts of
// two VMs (testdata/listing.json and listing-bridge.json: vm-1.a allowed,
// vm2 denied).
func TestParseListing(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "listing.json"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseListing(b)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(filepath.Join("testdata", "listing-bridge.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := parseBridgeListing(bb, st); err != nil {
		t.Fatal(err)
	}
	if !st.exists || !st.baseOK || st.baseRules != 0 || len(st.vms) != 2 {
		t.Fatalf("parseListing() = exists %v base %v base rules %d vms %d; want true, true, 0, 2", st.exists, st.baseOK, st.baseRules, len(st.vms))
	}
	v := st.vms["vm-1.a"]
	if !v.complete() || v.gen != 0x1234 || v.fp == "" {
		t.Errorf("vm-1.a: complete %v gen %#x fp %q; want true, 0x1234 and a fingerprint", v.complete(), v.gen, v.fp)
	}
	if !st.vms["vm2"].complete() || st.vms["vm2"].gen != 0xbeef {
		t.Errorf("vm2: complete %v gen %#x; want true, 0xbeef", st.vms["vm2"].complete(), st.vms["vm2"].gen)
	}
	got := map[string][]string{}
	for set, es := range v.elems {
		for _, e := range es {
			got[set] = append(got[set], e.addr.String()+" "+e.proto+" "+strconv.Itoa(int(e.port))+" "+strconv.Itoa(int(e.mark)))
		}
	}
	want := map[string][]string{
		"v_vm-1.a_adns":  {"192.0.2.10  0 0"},
		"v_vm-1.a_adnsp": {"140.82.121.4 tcp 443 0"},
		"v_vm-1.a_ddnsp": {"140.82.121.3 tcp 22 0"},
		"v_vm-1.a_seen":  {"10.20.0.5 udp 53 2", "198.51.100.10 tcp 80 4"},
	}
	for set, w := range want {
		if !slices.Equal(got[set], w) {
			t.Errorf("elements of %s = %q, want %q", set, got[set], w)
		}
	}
	for _, e := range v.elems["v_vm-1.a_seen"] {
		if e.expires < 1790*time.Second || e.expires > time.Hour {
			t.Errorf("seen element %s expires in %v, want about 30 to 60 minutes", e.addr, e.expires)
		}
	}

	if bad := strings.Replace(string(bb), `"prio": -210`, `"prio": -200`, 1); true {
		st, _ := parseListing(b)
		if err := parseBridgeListing([]byte(bad), st); err != nil || st.baseOK {
			t.Errorf("parseBridgeListing() with priority -200: base ok %v, %v; want not ok", st.baseOK, err)
		}
	}
	// A changed base is noticed.
	for _, damage := range []struct{ from, to string }{
		{`"prio": -10`, `"prio": 0`},
		{`"len": 12`, `"len": 13`},
		{`"name": "forward"`, `"name": "forwardx"`},
	} {
		st, err := parseListing([]byte(strings.Replace(string(b), damage.from, damage.to, 1)))
		if err != nil || st.baseOK {
			t.Errorf("parseListing() with %s -> %s: base ok %v, %v; want not ok", damage.from, damage.to, st.baseOK, err)
		}
	}
	if _, err := parseListing([]byte("{")); err == nil {
		t.Errorf("parseListing({) = nil error, want one")
	}
}

func TestTimeouts(t *testing.T) {
	tests := []struct {
		ttl        uint32
		allow, den time.Duration
	}{
		{0, 30 * time.Second, 5 * time.Minute},
		{5, 30 * time.Second, 5 * time.Minute},
		{28, 30 * time.Second, 5 * time.Minute},
		{60, 62 * time.Second, 5 * time.Minute},
		{600, 602 * time.Second, 602 * time.Second},
		{3598, time.Hour, time.Hour},
		{86400, time.Hour, time.Hour},
		{^uint32(0), time.Hour, time.Hour},
	}
	for _, tt := range tests {
		if got := learnTimeout(tt.ttl); got != tt.allow {
			t.Errorf("learnTimeout(%d) = %v, want %v", tt.ttl, got, tt.allow)
		}
		if got := denyTimeout(tt.ttl); got != tt.den {
			t.Errorf("denyTimeout(%d) = %v, want %v", tt.ttl, got, tt.den)
		}
	}
}

func TestLearnScript(t *testing.T) {
	a := netip.MustParseAddr
	known := learnKey{addr: a("192.0.2.2"), proto: "tcp", port: 443}
	got := learnScript("ip t", objectsOf("vm1"), map[learnKey]time.Duration{
		known:                  time.Minute,
		{addr: a("192.0.2.1")}: 30 * time.Second,
	}, func(k learnKey) bool { return k == known }, []learnKey{{deny: true, addr: a("198.51.100.1")}})
	want := []string{
		"add element ip t v_vm1_adns { 192.0.2.1 timeout 30s }",
		"add element ip t v_vm1_adnsp { 192.0.2.2 . tcp . 443 timeout 60s }",
		"delete element ip t v_vm1_adnsp { 192.0.2.2 . tcp . 443 }",
		"add element ip t v_vm1_adnsp { 192.0.2.2 . tcp . 443 timeout 60s }",
		"add element ip t v_vm1_ddns { 198.51.100.1 timeout 1s }",
		"delete element ip t v_vm1_ddns { 198.51.100.1 }",
	}
	if !slices.Equal(got, want) {
		t.Errorf("learnScript() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestProbeUpdated(t *testing.T) {
	tests := []struct {
		out  string
		want bool
		err  bool
	}{
		{`{"nftables": [{"metainfo": {}}, {"set": {"name": "probe", "elem": [{"elem": {"val": "0.0.0.1", "timeout": 1000, "expires": 999}}]}}]}`, true, false},
		{`{"nftables": [{"set": {"name": "probe", "elem": [{"elem": {"val": "0.0.0.1", "timeout": 10, "expires": 9}}]}}]}`, false, false},
		{`{"nftables": [{"set": {"name": "probe"}}]}`, false, true},
		{`{`, false, true},
	}
	for _, tt := range tests {
		got, err := probeUpdated([]byte(tt.out))
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("probeUpdated(%s) = %v, %v; want %v, error %v", tt.out, got, err, tt.want, tt.err)
		}
	}
}
