package network

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmtest"
)

// testManager returns a Manager whose commands run in a fresh namespace.
func testManager(t *testing.T) (*Manager, *vmtest.NS) {
	t.Helper()
	vmtest.RequireHost(t, "the bridge and TAP tests", vmtest.Root(), vmtest.Tool("ip", "iproute2"))
	ns := vmtest.NewNS(t)
	return &Manager{R: ns.Runner(), Subnet: netip.MustParsePrefix("10.77.3.0/24")}, ns
}

func ipOut(t *testing.T, ns *vmtest.NS, args ...string) string {
	t.Helper()
	out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestEnsureBridgeIdempotent(t *testing.T) {
	ctx := context.Background()
	m, ns := testManager(t)
	for i := range 2 {
		if err := m.EnsureBridge(ctx); err != nil {
			t.Fatalf("EnsureBridge() #%d: %v", i+1, err)
		}
	}
	out := ipOut(t, ns, "-d", "addr", "show", "dev", DefaultBridge)
	if !strings.Contains(out, "inet 10.77.3.1/24") || strings.Count(out, "inet ") != 1 {
		t.Errorf("bridge addresses:\n%s\nwant exactly inet 10.77.3.1/24", out)
	}
	if !strings.Contains(out, "bridge") || !strings.Contains(out, ",UP") {
		t.Errorf("bridge link:\n%s\nwant an UP bridge", out)
	}

	// A device of the bridge's name that is not a bridge is refused.
	m2 := &Manager{R: m.R, Bridge: "notbr0"}
	ipOut(t, ns, "tuntap", "add", "dev", "notbr0", "mode", "tun")
	if err := m2.EnsureBridge(ctx); err == nil {
		t.Error("EnsureBridge() over a tun device = nil, want an error")
	}

	if err := m.DeleteBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteBridge(ctx); err != nil {
		t.Errorf("DeleteBridge() of a missing bridge = %v, want nil", err)
	}
}

func TestTAPLifecycle(t *testing.T) {
	ctx := context.Background()
	m, ns := testManager(t)
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := NamesFor(0).TAPName("0123456789abcdef"), NamesFor(0).TAPName("fedcba9876543210")
	for i := range 2 {
		if err := m.CreateTAP(ctx, a, 65534, 65534); err != nil {
			t.Fatalf("CreateTAP(%s) #%d: %v", a, i+1, err)
		}
	}
	if err := m.CreateTAP(ctx, b, -1, -1); err != nil {
		t.Fatal(err)
	}
	out := ipOut(t, ns, "-d", "link", "show", "dev", a)
	for _, want := range []string{"master " + DefaultBridge, "tun type tap", ",UP"} {
		if !strings.Contains(out, want) {
			t.Errorf("tap %s:\n%s\nwant %q", a, out, want)
		}
	}
	// Another owner is refused rather than silently reused.
	if err := m.CreateTAP(ctx, a, 0, 0); err == nil {
		t.Errorf("CreateTAP(%s, 0, 0) over a tap owned by 65534 = nil, want an error", a)
	}
	// A detached, down tap is re-attached and brought up.
	ipOut(t, ns, "link", "set", "dev", a, "nomaster", "down")
	if err := m.CreateTAP(ctx, a, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, ns, "link", "show", "dev", a); !strings.Contains(out, "master "+DefaultBridge) || !strings.Contains(out, ",UP") {
		t.Errorf("re-created tap %s:\n%s\nwant it UP on %s", a, out, DefaultBridge)
	}

	ipOut(t, ns, "tuntap", "add", "dev", "other-tap", "mode", "tap")
	ipOut(t, ns, "tuntap", "add", "dev", TAPPrefix+"tun", "mode", "tun")
	got, err := m.ListTAPs(ctx, TAPPrefix, -1)
	if want := []string{a, b}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ListTAPs(%q) = %v, %v, want %v", TAPPrefix, got, err, want)
	}
	if all, _ := m.ListTAPs(ctx, "", -1); len(all) != 3 {
		t.Errorf("ListTAPs(\"\") = %v, want 3 taps", all)
	}
	// Only the owner's devices: another daemon's are never listed.
	if got, _ := m.ListTAPs(ctx, TAPPrefix, 65534); !slices.Equal(got, []string{a}) {
		t.Errorf("ListTAPs(%q, 65534) = %v, want [%s]", TAPPrefix, got, a)
	}
	if got, _ := m.ListTAPs(ctx, TAPPrefix, 4242); len(got) != 0 {
		t.Errorf("ListTAPs(%q, 4242) = %v, want none", TAPPrefix, got)
	}

	for i := range 2 {
		if err := m.DeleteTAP(ctx, a); err != nil {
			t.Fatalf("DeleteTAP(%s) #%d: %v", a, i+1, err)
		}
	}
	if got, _ := m.ListTAPs(ctx, TAPPrefix, -1); !slices.Equal(got, []string{b}) {
		t.Errorf("ListTAPs() after delete = %v, want [%s]", got, b)
	}
	if err := m.CreateTAP(ctx, "a/b", -1, -1); err == nil {
		t.Error("CreateTAP(a/b) = nil, want an invalid name error")
	}
}

func TestTAPName(t *testing.T) {
	tests := []struct{ id, want string }{
		{"0123456789abcdef", "bgtap-012345678"},
		{"abc", "bgtap-abc"},
		{"", "bgtap-"},
		{"a/b:c d.e", "bgtap-abcde"},
		{"ünï-cødé_x", "bgtap-n-cd_x"},
	}
	for _, tt := range tests {
		got := NamesFor(0).TAPName(tt.id)
		if got != tt.want {
			t.Errorf("TAPName(%q) = %q, want %q", tt.id, got, tt.want)
		}
		if len(got) > 15 {
			t.Errorf("TAPName(%q) = %q is %d bytes, want <= 15", tt.id, got, len(got))
		}
	}
}

func TestMAC(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"172.30.0.2", "02:ba:ac:1e:00:02"},
		{"10.0.0.255", "02:ba:0a:00:00:ff"},
		{"fd00::1:2", "02:ba:00:01:00:02"},
	}
	for _, tt := range tests {
		if got := MAC(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("MAC(%s) = %s, want %s", tt.ip, got, tt.want)
		}
	}
}

func TestManagerDefaults(t *testing.T) {
	tests := []struct {
		m          *Manager
		bridge, gw string
	}{
		{&Manager{}, "banger0", "172.30.0.1"},
		{&Manager{Bridge: "br9", Subnet: netip.MustParsePrefix("10.1.2.77/24")}, "br9", "10.1.2.1"},
	}
	for _, tt := range tests {
		if got := tt.m.BridgeName(); got != tt.bridge {
			t.Errorf("Manager{%q, %v}.BridgeName() = %s, want %s", tt.m.Bridge, tt.m.Subnet, got, tt.bridge)
		}
		if got := tt.m.Gateway().String(); got != tt.gw {
			t.Errorf("Manager{%q, %v}.Gateway() = %s, want %s", tt.m.Bridge, tt.m.Subnet, got, tt.gw)
		}
	}
}

func TestOwnerMatches(t *testing.T) {
	names := func(id string) (string, error) {
		if id == "1000" {
			return "alice", nil
		}
		return "", errors.New("unknown")
	}
	tests := []struct {
		field string
		id    int
		want  bool
	}{
		{"alice", 1000, true},
		{"1000", 1000, true},
		{"bob", 1000, false},
		{"", 1000, false},
		{"4242", 4242, true},
		{"anything", -1, true},
	}
	for _, tt := range tests {
		if got := ownerMatches(tt.field, tt.id, names); got != tt.want {
			t.Errorf("ownerMatches(%q, %d) = %v, want %v", tt.field, tt.id, got, tt.want)
		}
	}
}

func TestNamesFor(t *testing.T) {
	tests := []struct {
		uid                                  int
		bridge, subnet, tap, pool, table, gw string
	}{
		{0, "banger0", "172.30.0.0/24", "bgtap-", "tap-pool-", "banger", "172.30.0.1"},
		{1000, "banger1000", "172.30.236.0/24", "bgt1000-", "bgp1000-", "banger_u1000", "172.30.236.1"},
		{1, "banger1", "172.30.2.0/24", "bgt1-", "bgp1-", "banger_u1", "172.30.2.1"},
		{255, "banger255", "172.30.1.0/24", "bgt255-", "bgp255-", "banger_u255", "172.30.1.1"},
		{4294967294, "banger1z141z2", "172.30.255.0/24", "bgt1z141z2-", "bgp1z141z2-", "banger_u1z141z2", "172.30.255.1"},
	}
	for _, tt := range tests {
		n := NamesFor(tt.uid)
		got := []string{n.Bridge, n.Subnet.String(), n.TAPPrefix, n.PoolPrefix, n.Table, n.Gateway().String()}
		want := []string{tt.bridge, tt.subnet, tt.tap, tt.pool, tt.table, tt.gw}
		if !slices.Equal(got, want) {
			t.Errorf("NamesFor(%d) = %v, want %v", tt.uid, got, want)
		}
		if len(n.Bridge) > 15 || len(n.TAPName("0123456789ab")) > 15 || len(n.TAPName("0123456789ab")) < len(n.TAPPrefix)+4 {
			t.Errorf("NamesFor(%d): bridge %q, tap %q: want at most 15 bytes with 4 or more of the VM id", tt.uid, n.Bridge, n.TAPName("0123456789ab"))
		}
		// No owner's prefix is a prefix of another's, so one daemon's listing never sees another's devices.
		for _, other := range []int{0, 1, 10, 100, 1000, 10000} {
			o := NamesFor(other)
			if other != tt.uid && (strings.HasPrefix(o.TAPPrefix, n.TAPPrefix) || strings.HasPrefix(o.PoolPrefix, n.PoolPrefix)) {
				t.Errorf("NamesFor(%d) prefixes %q/%q also match uid %d's %q/%q", tt.uid, n.TAPPrefix, n.PoolPrefix, other, o.TAPPrefix, o.PoolPrefix)
			}
		}
	}
}
