package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/runner/runnertest"
)

// fakeNFT answers `nft -j list table` with lists, one after the other (""
// meaning no such table), and every other nft call with err.
func fakeNFT(lists []string, err error) *runnertest.Runner {
	r := &runnertest.Runner{}
	var replies []runnertest.Reply
	for _, out := range lists {
		if out == "" {
			replies = append(replies, runnertest.Reply{Err: errors.New("nft -j list table ip banger: exit status 1: Error: No such file or directory")})
		} else {
			replies = append(replies, runnertest.Reply{Out: out})
		}
	}
	if len(replies) == 0 {
		replies = []runnertest.Reply{{Err: errors.New("unexpected list")}}
	}
	r.Reply("nft -j list table", replies...)
	r.Reply("nft", runnertest.Reply{Err: err})
	r.OK("sysctl")
	return r
}

// changes are the nft calls that change something: all but the listings.
func changes(r *runnertest.Runner) []string {
	var out []string
	for _, c := range r.Calls() {
		c = strings.TrimPrefix(strings.TrimPrefix(c, "priv "), "run ")
		if !strings.HasPrefix(c, "nft -j list table") {
			out = append(out, c)
		}
	}
	return out
}

func oneVM(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/one-vm.json")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var (
	ip2 = netip.MustParseAddr("10.88.0.2")
	ip3 = netip.MustParseAddr("10.88.0.3")
)

func testManager(r runner.Runner) *Manager {
	return &Manager{R: r, Bridge: "br0", Subnet: netip.MustParsePrefix("10.88.0.0/24")}
}

func TestScripts(t *testing.T) {
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{
			name: "base",
			got:  baseScript("banger", "banger0"),
			want: []string{
				"add table ip banger",
				"delete table ip banger",
				"add table ip banger",
				"add chain ip banger postrouting { type nat hook postrouting priority srcnat; policy accept; }",
				"add chain ip banger forward { type filter hook forward priority filter; policy accept; }",
				`add rule ip banger forward iifname "banger0" oifname != "banger0" drop comment "banger:drop"`,
			},
		},
		{
			name: "add vm",
			got:  addVMScript("banger", "br0", "abc", ip2),
			want: []string{
				`add rule ip banger postrouting ip saddr 10.88.0.2 oifname != "br0" masquerade comment "vm:abc"`,
				`insert rule ip banger forward oifname "br0" ip daddr 10.88.0.2 ct state established,related accept comment "vm:abc"`,
				`insert rule ip banger forward iifname "br0" ip saddr 10.88.0.2 accept comment "vm:abc"`,
			},
		},
		{
			name: "delete",
			got:  deleteScript("t", []rule{{Chain: "postrouting", Handle: 4}, {Chain: "forward", Handle: 6}}),
			want: []string{"delete rule ip t postrouting handle 4", "delete rule ip t forward handle 6"},
		},
		{
			name: "delete nothing",
			got:  deleteScript("t", nil),
			want: nil,
		},
	}
	for _, tt := range tests {
		if !slices.Equal(tt.got, tt.want) {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	st, err := parse([]byte(oneVM(t)))
	if err != nil {
		t.Fatal(err)
	}
	want := []rule{
		{Chain: "postrouting", Handle: 4, Comment: "vm:abc", Sig: "payload.ip.saddr == 10.88.0.2; meta.oifname != br0; masquerade", IP: ip2},
		{Chain: "forward", Handle: 6, Comment: "vm:abc", Sig: "meta.iifname == br0; payload.ip.saddr == 10.88.0.2; accept", IP: ip2},
		{Chain: "forward", Handle: 5, Comment: "vm:abc", Sig: "meta.oifname == br0; payload.ip.daddr == 10.88.0.2; ct.state in established,related; accept", IP: ip2},
		{Chain: "forward", Handle: 3, Comment: "banger:drop", Sig: "meta.iifname == br0; meta.oifname != br0; drop"},
	}
	if !slices.Equal(st.Rules, want) {
		t.Errorf("parse(one-vm.json).Rules = %+v, want %+v", st.Rules, want)
	}
	if got := st.vms(); len(got) != 1 || got["abc"] != ip2 {
		t.Errorf("parse(one-vm.json).vms() = %v, want map[abc:10.88.0.2]", got)
	}
	if !vmOK(st.vmRules("abc"), "br0", ip2) {
		t.Errorf("vmOK(abc, br0, %s) = false, want true", ip2)
	}
	if vmOK(st.vmRules("abc"), "br0", ip3) {
		t.Errorf("vmOK(abc, br0, %s) = true, want false", ip3)
	}
}

func TestHealthy(t *testing.T) {
	good := oneVM(t)
	tests := []struct {
		name   string
		json   string
		bridge string
		want   bool
	}{
		{"as created", good, "br0", true},
		{"other bridge", good, "banger0", false},
		{"missing table", "", "br0", false},
		{"wrong priority", strings.Replace(good, `"prio": 100`, `"prio": 50`, 1), "br0", false},
		{"drop policy", strings.Replace(good, `"prio": 0, "policy": "accept"`, `"prio": 0, "policy": "drop"`, 1), "br0", false},
		{"foreign rule", strings.Replace(good, `"comment": "vm:abc", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}`,
			`"comment": "mine", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}`, 1), "br0", false},
		{"vm rule after drop", dropFirst(t, good), "br0", false},
		{"incomplete vm", strings.Replace(good, `"comment": "vm:abc", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}`,
			`"comment": "vm:xyz", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}`, 1), "br0", false},
	}
	for _, tt := range tests {
		st := &state{}
		if tt.json != "" {
			var err error
			if st, err = parse([]byte(tt.json)); err != nil {
				t.Fatal(err)
			}
		}
		if got := st.healthy(tt.bridge); got != tt.want {
			t.Errorf("healthy(%s, %s) = %v, want %v", tt.name, tt.bridge, got, tt.want)
		}
	}
}

// dropFirst moves the drop rule of a listing ahead of the VM rules.
func dropFirst(t *testing.T, listing string) string {
	t.Helper()
	listing = strings.TrimSpace(listing)
	i := strings.Index(listing, `, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 3`)
	j := strings.Index(listing, `, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 6`)
	if i < 0 || j < 0 || j > i {
		t.Fatal("unexpected testdata/one-vm.json")
	}
	drop := listing[i : len(listing)-2]
	return listing[:j] + drop + listing[j:i] + "]}"
}

func TestReconcileScript(t *testing.T) {
	st, err := parse([]byte(oneVM(t)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		want        map[string]netip.Addr
		wantScript  []string
		wantRemoved []string
		wantAdded   []string
	}{
		{"unchanged", map[string]netip.Addr{"abc": ip2}, nil, nil, nil},
		{
			"stale", map[string]netip.Addr{},
			[]string{"delete rule ip banger postrouting handle 4", "delete rule ip banger forward handle 6", "delete rule ip banger forward handle 5"},
			[]string{"abc"}, nil,
		},
		{
			"added", map[string]netip.Addr{"abc": ip2, "def": ip3},
			addVMScript("banger", "br0", "def", ip3), nil, []string{"def"},
		},
		{
			"moved", map[string]netip.Addr{"abc": ip3},
			append([]string{"delete rule ip banger postrouting handle 4", "delete rule ip banger forward handle 6", "delete rule ip banger forward handle 5"},
				addVMScript("banger", "br0", "abc", ip3)...),
			[]string{"abc"}, []string{"abc"},
		},
	}
	for _, tt := range tests {
		script, removed, added := reconcileScript(st, "banger", "br0", tt.want)
		if !slices.Equal(script, tt.wantScript) || !slices.Equal(removed, tt.wantRemoved) || !slices.Equal(added, tt.wantAdded) {
			t.Errorf("reconcileScript(%s) = %q, %q, %q, want %q, %q, %q", tt.name, script, removed, added, tt.wantScript, tt.wantRemoved, tt.wantAdded)
		}
	}
}

func TestEnableCommands(t *testing.T) {
	good := oneVM(t)
	tests := []struct {
		name  string
		lists []string
		id    string
		ip    netip.Addr
		want  []string
	}{
		{"already enabled", []string{good}, "abc", ip2, nil},
		{"new vm", []string{good}, "def", ip3, []string{"nft " + strings.Join(addVMScript("banger", "br0", "def", ip3), "\n")}},
		{
			"fresh table", []string{"", strings.Replace(good, `"vm:abc"`, `"vm:zzz"`, -1)}, "abc", ip2,
			[]string{"nft " + strings.Join(baseScript("banger", "br0"), "\n"), "nft " + strings.Join(addVMScript("banger", "br0", "abc", ip2), "\n")},
		},
		{
			"new address", []string{good}, "abc", ip3,
			[]string{"nft " + strings.Join(append(deleteScript("banger", []rule{{Chain: "postrouting", Handle: 4}, {Chain: "forward", Handle: 6}, {Chain: "forward", Handle: 5}}),
				addVMScript("banger", "br0", "abc", ip3)...), "\n")},
		},
	}
	for _, tt := range tests {
		f := fakeNFT(tt.lists, nil)
		if err := testManager(f).Enable(context.Background(), tt.id, tt.ip); err != nil {
			t.Errorf("Enable(%s) = %v, want nil", tt.name, err)
			continue
		}
		if !slices.Equal(changes(f), tt.want) {
			t.Errorf("Enable(%s) ran %q, want %q", tt.name, changes(f), tt.want)
		}
	}
}

func TestEnsureRebuildKeepsVMs(t *testing.T) {
	f := fakeNFT([]string{oneVM(t), oneVM(t)}, nil)
	m := testManager(f)
	m.Bridge = "banger1"
	if err := m.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"nft " + strings.Join(append(baseScript("banger", "banger1"), addVMScript("banger", "banger1", "abc", ip2)...), "\n")}
	if !slices.Equal(changes(f), want) {
		t.Errorf("Ensure(bridge renamed) ran %q, want %q", changes(f), want)
	}
}

func TestDisableCommands(t *testing.T) {
	tests := []struct {
		name  string
		lists []string
		id    string
		want  []string
	}{
		{"enabled", []string{oneVM(t)}, "abc", []string{"nft delete rule ip banger postrouting handle 4\ndelete rule ip banger forward handle 6\ndelete rule ip banger forward handle 5"}},
		{"other vm", []string{oneVM(t)}, "def", nil},
		{"no table", []string{""}, "abc", nil},
	}
	for _, tt := range tests {
		f := fakeNFT(tt.lists, nil)
		if err := testManager(f).Disable(context.Background(), tt.id); err != nil {
			t.Errorf("Disable(%s) = %v, want nil", tt.name, err)
			continue
		}
		if !slices.Equal(changes(f), tt.want) {
			t.Errorf("Disable(%s) ran %q, want %q", tt.name, changes(f), tt.want)
		}
	}
}

func TestInvalidInput(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
	}{
		{"id with quote", testManager(fakeNFT(nil, nil)).Enable(ctx, `a"b`, ip2)},
		{"empty id", testManager(fakeNFT(nil, nil)).Enable(ctx, "", ip2)},
		{"outside subnet", testManager(fakeNFT(nil, nil)).Enable(ctx, "abc", netip.MustParseAddr("10.99.0.2"))},
		{"ipv6", testManager(fakeNFT(nil, nil)).Enable(ctx, "abc", netip.MustParseAddr("fd00::2"))},
		{"bad bridge", (&Manager{R: fakeNFT(nil, nil), Bridge: `br"0`}).Ensure(ctx)},
		{"bad table", (&Manager{R: fakeNFT(nil, nil), Table: "ban ger"}).Teardown(ctx)},
		{"reconcile bad id", testManager(fakeNFT(nil, nil)).Reconcile(ctx, map[string]netip.Addr{"a;b": ip2})},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Errorf("%s: err = nil, want an error", tt.name)
		}
	}
}

func TestTeardownCommands(t *testing.T) {
	f := fakeNFT(nil, nil)
	if err := (&Manager{R: f}).Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"nft add table ip banger\ndelete table ip banger"}
	if !slices.Equal(changes(f), want) {
		t.Errorf("Teardown() ran %q, want %q", changes(f), want)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string // substring of the error; "" means nil
	}{
		{"works", nil, ""},
		{"missing", &exec.Error{Name: "nft", Err: exec.ErrNotFound}, "nft not found: apt-get install nftables"},
		{"missing under sudo", errors.New("sudo -n -- nft list tables: exit status 1: sudo: nft: command not found"), "nft not found: apt-get install nftables"},
		{"sudo", fmt.Errorf("running nft: %w", runner.ErrSudoPassword), "password"},
		{"kernel", errors.New("nft list tables: exit status 1: Error: Operation not supported"), "modprobe nf_tables"},
	}
	for _, tt := range tests {
		err := Check(context.Background(), fakeNFT(nil, tt.err))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Check(%s) = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Check(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestForwarding(t *testing.T) {
	old := procIPForward
	t.Cleanup(func() { procIPForward = old })
	procIPForward = filepath.Join(t.TempDir(), "ip_forward")
	tests := []struct {
		content     string
		wantChanged bool
		wantCalls   []string
	}{
		{"0\n", true, []string{"sysctl -w net.ipv4.ip_forward=1"}},
		{"1\n", false, nil},
	}
	for _, tt := range tests {
		if err := os.WriteFile(procIPForward, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		f := fakeNFT(nil, nil)
		changed, err := (&Manager{R: f}).EnsureForwarding(context.Background())
		if err != nil || changed != tt.wantChanged || !slices.Equal(changes(f), tt.wantCalls) {
			t.Errorf("EnsureForwarding(ip_forward=%q) = %v, %v running %q, want %v, nil running %q",
				strings.TrimSpace(tt.content), changed, err, changes(f), tt.wantChanged, tt.wantCalls)
		}
	}
	if err := os.WriteFile(procIPForward, []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if on, err := ForwardingEnabled(); err == nil {
		t.Errorf("ForwardingEnabled(ip_forward=2) = %v, nil, want an error", on)
	}
}
