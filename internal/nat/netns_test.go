package nat

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmtest"
)

// needNamespaces gates the tests that use real nft in namespaces.
func needNamespaces(t *testing.T) {
	t.Helper()
	vmtest.Require(t, "NAT in network namespaces", vmtest.Root(), vmtest.Tool("nft", "nftables"))
}

// sh runs a command in ns and fails the test on error.
func sh(t *testing.T, ns *vmtest.NS, name string, args ...string) string {
	t.Helper()
	out, err := ns.Runner().Run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestTableInNamespace(t *testing.T) {
	needNamespaces(t)
	ctx := context.Background()
	ns := vmtest.NewNS(t)
	r := ns.Runner()
	sh(t, ns, "nft", `add table inet user
add chain inet user input { type filter hook input priority 0; policy accept; }
add chain inet user forward { type filter hook forward priority 0; policy accept; }
add rule inet user input tcp dport 22 accept comment "user rule"
add rule inet user forward iifname "eth9" drop`)
	userBefore := sh(t, ns, "nft", "list", "table", "inet", "user")

	// Only the user's table and, at times, banger's may ever exist.
	checkTables := func(step string, wantBanger bool) {
		t.Helper()
		want := "table inet user\n"
		if wantBanger {
			want += "table ip banger\n"
		}
		if got := sh(t, ns, "nft", "list", "tables"); got != want {
			t.Errorf("after %s: nft list tables = %q, want %q", step, got, want)
		}
		if got := sh(t, ns, "nft", "list", "table", "inet", "user"); got != userBefore {
			t.Errorf("after %s: table inet user = %q, want it unchanged: %q", step, got, userBefore)
		}
	}
	ruleCount := func() int {
		t.Helper()
		st, err := parse([]byte(sh(t, ns, "nft", "-j", "list", "table", "ip", "banger")))
		if err != nil {
			t.Fatal(err)
		}
		return len(st.Rules)
	}
	wantRules := func(step string, m *Manager, want map[string]netip.Addr) {
		t.Helper()
		got, err := m.Rules(ctx)
		if err != nil {
			t.Fatalf("after %s: Rules() = %v", step, err)
		}
		if len(got) != len(want) {
			t.Errorf("after %s: Rules() = %v, want %v", step, got, want)
		}
		for id, ip := range want {
			if got[id] != ip {
				t.Errorf("after %s: Rules() = %v, want %v", step, got, want)
			}
		}
	}

	m := &Manager{R: r, Bridge: "br0", Subnet: netip.MustParsePrefix("10.88.0.0/24")}
	wantRules("nothing", m, nil)
	if err := m.Disable(ctx, "ghost"); err != nil {
		t.Errorf("Disable(ghost) without a table = %v, want nil", err)
	}
	for i := range 2 {
		if err := m.Ensure(ctx); err != nil {
			t.Fatalf("Ensure() #%d = %v", i+1, err)
		}
	}
	checkTables("Ensure", true)
	if got := ruleCount(); got != 1 {
		t.Errorf("after Ensure: %d rules, want 1 (the drop rule)", got)
	}
	listing := sh(t, ns, "nft", "list", "table", "ip", "banger")
	if err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, ns, "nft", "list", "table", "ip", "banger"); got != listing {
		t.Errorf("Ensure() on a ready table changed it: %q, want %q", got, listing)
	}

	for i := range 2 {
		if err := m.Enable(ctx, "vm1", ip2); err != nil {
			t.Fatalf("Enable(vm1) #%d = %v", i+1, err)
		}
		if got := ruleCount(); got != 4 {
			t.Errorf("after Enable(vm1) #%d: %d rules, want 4", i+1, got)
		}
	}
	wantRules("Enable(vm1)", m, map[string]netip.Addr{"vm1": ip2})
	if err := m.Enable(ctx, "vm2", ip3); err != nil {
		t.Fatal(err)
	}
	wantRules("Enable(vm2)", m, map[string]netip.Addr{"vm1": ip2, "vm2": ip3})
	checkTables("Enable", true)

	// The drop rule must stay last.
	fwd := sh(t, ns, "nft", "list", "chain", "ip", "banger", "forward")
	lines := strings.Split(strings.TrimSpace(fwd), "\n")
	if len(lines) < 3 || !strings.Contains(lines[len(lines)-3], `comment "banger:drop"`) {
		t.Errorf("forward chain does not end with the drop rule:\n%s", fwd)
	}

	if err := m.Disable(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	wantRules("Disable(vm1)", m, map[string]netip.Addr{"vm2": ip3})
	if got := ruleCount(); got != 4 {
		t.Errorf("after Disable(vm1): %d rules, want 4", got)
	}
	if got := sh(t, ns, "nft", "list", "table", "ip", "banger"); strings.Contains(got, "10.88.0.2") || strings.Count(got, "10.88.0.3") != 3 {
		t.Errorf("after Disable(vm1): table = %s, want vm2's three rules and none of vm1", got)
	}
	if err := m.Disable(ctx, "vm1"); err != nil {
		t.Errorf("Disable(vm1) again = %v, want nil", err)
	}

	// vm2 is stale, vm3 is wanted.
	ip4 := netip.MustParseAddr("10.88.0.4")
	if err := m.Reconcile(ctx, map[string]netip.Addr{"vm3": ip4}); err != nil {
		t.Fatal(err)
	}
	wantRules("Reconcile", m, map[string]netip.Addr{"vm3": ip4})
	if got := ruleCount(); got != 4 {
		t.Errorf("after Reconcile: %d rules, want 4", got)
	}
	listing = sh(t, ns, "nft", "list", "table", "ip", "banger")
	if err := m.Reconcile(ctx, map[string]netip.Addr{"vm3": ip4}); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, ns, "nft", "list", "table", "ip", "banger"); got != listing {
		t.Errorf("Reconcile() again changed the table: %q, want %q", got, listing)
	}
	checkTables("Reconcile", true)

	// A damaged table is rebuilt with its VMs; so is one for a renamed bridge.
	sh(t, ns, "nft", "flush", "chain", "ip", "banger", "forward")
	if err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ruleCount(); got != 4 {
		t.Errorf("after repairing Ensure: %d rules, want 4", got)
	}
	m2 := &Manager{R: r, Bridge: "br1", Subnet: m.Subnet}
	if err := m2.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, ns, "nft", "list", "table", "ip", "banger"); strings.Contains(got, `"br0"`) || strings.Count(got, `"br1"`) != 5 {
		t.Errorf("after Ensure with bridge br1: table = %s, want every rule on br1", got)
	}
	wantRules("bridge rename", m2, map[string]netip.Addr{"vm3": ip4})
	checkTables("rebuild", true)

	for i := range 2 {
		if err := m.Teardown(ctx); err != nil {
			t.Fatalf("Teardown() #%d = %v", i+1, err)
		}
	}
	checkTables("Teardown", false)
	wantRules("Teardown", m, nil)

	if err := Check(ctx, r); err != nil {
		t.Errorf("Check() = %v, want nil", err)
	}
}

func TestNATTraffic(t *testing.T) {
	needNamespaces(t)
	ctx := context.Background()
	h, g, u := vmtest.NewNS(t), vmtest.NewNS(t), vmtest.NewNS(t)

	// H: the host, bridge br0 10.88.0.1/24, uplink up0 192.0.2.2/24 to U.
	sh(t, h, "ip", "link", "add", "br0", "type", "bridge")
	sh(t, h, "ip", "addr", "add", "10.88.0.1/24", "dev", "br0")
	sh(t, h, "ip", "link", "set", "br0", "up")
	// G: the guest, 10.88.0.2/24 on vg, whose peer vh is a port of br0.
	sh(t, g, "ip", "link", "add", "vg", "type", "veth", "peer", "name", "vh", "netns", h.Name)
	sh(t, h, "ip", "link", "set", "vh", "master", "br0", "up")
	sh(t, g, "ip", "addr", "add", "10.88.0.2/24", "dev", "vg")
	sh(t, g, "ip", "link", "set", "vg", "up")
	sh(t, g, "ip", "route", "add", "default", "via", "10.88.0.1")
	// U: the upstream network, 192.0.2.1/24. Its route back to the guest subnet means
	// only banger's rules decide whether the guest gets through, and unNATed traffic
	// would show the guest's own address.
	sh(t, h, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "uu", "netns", u.Name)
	sh(t, h, "ip", "addr", "add", "192.0.2.2/24", "dev", "up0")
	sh(t, h, "ip", "link", "set", "up0", "up")
	sh(t, u, "ip", "addr", "add", "192.0.2.1/24", "dev", "uu")
	sh(t, u, "ip", "link", "set", "uu", "up")
	sh(t, u, "ip", "route", "add", "10.88.0.0/24", "via", "192.0.2.2")
	sh(t, h, "ip", "route", "add", "default", "via", "192.0.2.1")

	// Forwarding is per namespace: EnsureForwarding runs on a thread in H with a runner
	// that runs sysctl in H. The host's own setting must not move.
	hostFwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{R: h.Runner(), Bridge: "br0", Subnet: netip.MustParsePrefix("10.88.0.0/24")}
	for i, want := range []bool{true, false} {
		var changed bool
		if err := h.Do(func() error {
			var err error
			changed, err = m.EnsureForwarding(ctx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if changed != want {
			t.Errorf("EnsureForwarding() #%d in H = %v, want %v", i+1, changed, want)
		}
	}
	if got := strings.TrimSpace(sh(t, h, "sysctl", "-n", "net.ipv4.ip_forward")); got != "1" {
		t.Errorf("ip_forward in H = %s, want 1", got)
	}
	if got, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(got) != string(hostFwd) {
		t.Errorf("host ip_forward = %q, want it unchanged: %q", got, hostFwd)
	}

	// The upstream HTTP server records who connects.
	var ln net.Listener
	if err := u.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "192.0.2.1:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.RemoteAddr)
		mu.Unlock()
		io.WriteString(w, "hello")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	lastSeen := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		host, _, _ := net.SplitHostPort(seen[len(seen)-1])
		return host
	}

	fetch := func() error {
		client := &http.Client{
			Timeout: 2 * time.Second,
			Transport: &http.Transport{
				DisableKeepAlives: true,
				DialContext:       g.Dial,
			},
		}
		resp, err := client.Get("http://192.0.2.1:8080/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if string(body) != "hello" {
			return errors.New("unexpected body " + string(body))
		}
		return nil
	}

	if err := m.Enable(ctx, "guest", netip.MustParseAddr("10.88.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := fetch(); err != nil {
		t.Fatalf("fetch from the guest with NAT = %v, want success", err)
	}
	if got := lastSeen(); got != "192.0.2.2" {
		t.Errorf("server saw the NAT guest as %s, want 192.0.2.2 (masquerade)", got)
	}

	if err := m.Disable(ctx, "guest"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	if err := fetch(); err == nil {
		t.Errorf("fetch from the guest without NAT succeeded (server saw %s), want it to fail", lastSeen())
	}
	mu.Lock()
	if len(seen) != n {
		t.Errorf("server got a request from the guest without NAT: %v", seen[n:])
	}
	mu.Unlock()

	// Control: with banger's table gone nothing stops or masquerades the guest, so the
	// server sees its own address. This shows the two results above come from the table.
	if err := m.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fetch(); err != nil {
		t.Fatalf("fetch from the guest with no banger table = %v, want success", err)
	}
	if got := lastSeen(); got != "10.88.0.2" {
		t.Errorf("server saw the guest as %s with no banger table, want 10.88.0.2", got)
	}
	if got := sh(t, h, "nft", "list", "tables"); got != "" {
		t.Errorf("nft list tables in H after Teardown = %q, want none", got)
	}
}
