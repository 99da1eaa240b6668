package isolation

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmtest"
)

func TestScript(t *testing.T) {
	reset := func(t string) []string {
		return []string{"add table bridge " + t, "delete table bridge " + t, "add table inet " + t, "delete table inet " + t}
	}
	chains := func(t string) []string {
		return []string{"add chain bridge " + t + " forward { type filter hook forward priority filter; policy accept; }"}
	}
	tests := []struct {
		name    string
		m       Manager
		want    []string
		wantErr string
	}{
		{
			name: "one port, two prefixes",
			m:    Manager{Ports: []int{4096}, Bridge: "banger0", TAPPrefixes: []string{"bgtap-", "tap-pool-"}},
			want: append(append(append(reset("banger"), "add table bridge banger"), chains("banger")...),
				`add rule bridge banger forward iifname "bgtap-*" tcp dport { 4096 } drop comment "banger:private-ports"`,
				`add rule bridge banger forward iifname "tap-pool-*" tcp dport { 4096 } drop comment "banger:private-ports"`,
				"add table inet banger",
				"add chain inet banger forward { type filter hook forward priority filter; policy accept; }",
				`add rule inet banger forward iifname "banger0" oifname "banger0" tcp dport { 4096 } drop comment "banger:private-ports"`,
			),
		},
		{
			name: "several ports, own table and bridge",
			m:    Manager{Table: "t1", Bridge: "br9", Ports: []int{4096, 8080}, TAPPrefixes: []string{"x-"}},
			want: append(append(append(reset("t1"), "add table bridge t1"), chains("t1")...),
				`add rule bridge t1 forward iifname "x-*" tcp dport { 4096, 8080 } drop comment "banger:private-ports"`,
				"add table inet t1",
				"add chain inet t1 forward { type filter hook forward priority filter; policy accept; }",
				`add rule inet t1 forward iifname "br9" oifname "br9" tcp dport { 4096, 8080 } drop comment "banger:private-ports"`,
			),
		},
		{name: "no ports removes the tables", m: Manager{TAPPrefixes: []string{"x-"}}, want: reset("banger")},
		{name: "port out of range", m: Manager{Ports: []int{0}, Bridge: "b", TAPPrefixes: []string{"x-"}}, wantErr: "out of range"},
		{name: "no prefixes", m: Manager{Ports: []int{22}, Bridge: "b"}, wantErr: "no TAP device prefixes"},
		{name: "no bridge", m: Manager{Ports: []int{22}, TAPPrefixes: []string{"x-"}}, wantErr: "bridge name"},
		{name: "quote in prefix", m: Manager{Ports: []int{22}, Bridge: "b", TAPPrefixes: []string{`a"b`}}, wantErr: "not valid"},
		{name: "bad table", m: Manager{Table: "a b", Ports: []int{22}, Bridge: "b", TAPPrefixes: []string{"x-"}}, wantErr: "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.Script()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Script() = %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Script() = %v\n%q\nwant %q", err, got, tt.want)
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	listing := `table bridge banger {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "bgtap-*" tcp dport { 4096, 8080 } drop comment "banger:private-ports"
		iifname "tap-pool-*" tcp dport 4096 drop comment "banger:private-ports"
		tcp dport 22 drop comment "someone else"
	}
}`
	if got := parsePorts(listing); !reflect.DeepEqual(got, []int{4096, 8080}) {
		t.Fatalf("parsePorts = %v, want [4096 8080]", got)
	}
}

// TestEnsureReal applies the table with the real nft inside a network
// namespace the test creates, then changes and removes it.
func TestEnsureReal(t *testing.T) {
	vmtest.Require(t, "guest isolation with real nft", vmtest.Root(), vmtest.Tool("nft", "nftables"))
	m := &Manager{R: vmtest.NewNS(t).Runner(), Ports: []int{4096}, Bridge: "banger0", TAPPrefixes: []string{"bgtap-", "tap-pool-"}}
	ctx := context.Background()
	for i := 0; i < 2; i++ { // idempotent
		if err := m.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := m.Active(ctx); err != nil || !reflect.DeepEqual(got, []int{4096}) {
		t.Fatalf("Active() = %v, %v; want [4096]", got, err)
	}
	m.Ports = []int{4096, 9000}
	if err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Active(ctx); err != nil || !reflect.DeepEqual(got, []int{4096, 9000}) {
		t.Fatalf("Active() after change = %v, %v; want [4096 9000]", got, err)
	}
	m.Ports = nil
	if err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Active(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Active() after removal = %v, %v; want none", got, err)
	}
}
