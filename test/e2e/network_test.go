package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/vmtest"
)

// upstream is a second namespace standing in for the outside network: it
// holds an HTTP server and a DNS resolver, reachable from the daemon's
// namespace through a veth pair (daemon side 192.0.2.2, upstream 192.0.2.1).
type upstream struct {
	ns   *vmtest.NS
	mu   sync.Mutex
	seen []string // remote addresses of HTTP requests
}

func newUpstream(t *testing.T, e *env) *upstream { return newUpstreamIn(t, e.ns) }

// newUpstreamIn is newUpstream for the daemons of namespace ns.
func newUpstreamIn(t *testing.T, ns *vmtest.NS) *upstream {
	u := &upstream{ns: vmtest.NewNS(t)}
	for _, args := range [][]string{
		{"-n", ns.Name, "link", "add", "vh", "type", "veth", "peer", "name", "vu", "netns", u.ns.Name},
		{"-n", ns.Name, "addr", "add", "192.0.2.2/24", "dev", "vh"},
		{"-n", ns.Name, "link", "set", "vh", "up"},
		{"-n", ns.Name, "route", "add", "default", "via", "192.0.2.1"},
		{"-n", u.ns.Name, "addr", "add", "192.0.2.1/24", "dev", "vu"},
		{"-n", u.ns.Name, "link", "set", "vu", "up"},
	} {
		if out, err := vmtest.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	var ln net.Listener
	var pc net.PacketConn
	err := u.ns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", "192.0.2.1:8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", "192.0.2.1:53")
		return err
	})
	if err != nil {
		t.Fatalf("listening in upstream namespace: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.RemoteAddr)
		u.mu.Unlock()
		fmt.Fprint(w, "hello-from-upstream")
	})}
	go srv.Serve(ln)
	// The upstream resolver knows one outside name.
	dnsSrv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		if q := req.Question[0]; strings.EqualFold(q.Name, "outside.example.") && q.Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR("outside.example. 60 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go dnsSrv.ActivateAndServe()
	t.Cleanup(func() {
		srv.Close()
		dnsSrv.Shutdown()
	})
	return u
}

func (u *upstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

// query asks the daemon's DNS server (inside e's namespace) for name.
func query(t *testing.T, e *env, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	var resp *mdns.Msg
	err := e.ns.Do(func() error {
		var err error
		resp, _, err = (&mdns.Client{Timeout: 3 * time.Second}).Exchange(m, "127.0.0.1:53")
		return err
	})
	if err != nil {
		t.Fatalf("querying %s: %v", name, err)
	}
	return resp
}

// fetch is a shell command that fetches the upstream page with bash alone
// (the minimal image has no curl).
const fetch = `timeout 5 bash -c "exec 3<>/dev/tcp/192.0.2.1/8080 && printf \"GET / HTTP/1.0\r\n\r\n\" >&3 && cat <&3"`

// unreachable reports whether a failed fetch failed for lack of a route
// (timeout or refused), not for a broken command.
func unreachable(err error, stderr string) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && (ee.ExitCode() == 124 || ee.ExitCode() == 1) && !strings.Contains(stderr, "not found")
}

// natRules lists banger's nftables table in e's namespace ("" when absent).
func natRules(t *testing.T, e *env) string {
	out, err := vmtest.Command("ip", "netns", "exec", e.ns.Name, "nft", "list", "table", "ip", "banger").CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// TestNetworking boots a NAT guest and a plain guest behind a namespace that
// stands in for the upstream network, and checks NAT, its cleanup, the .vm
// DNS zone, guest-to-guest resolution, upstream forwarding and the TAP pool.
func TestNetworking(t *testing.T) {
	e := newEnvConfig(t, "dns_upstreams = [\"192.0.2.1:53\"]\ntap_pool_size = 2\nwarm_after_create = false\n")
	up := newUpstream(t, e)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.create("natbox", "--image", "minimal", "--nat") }()
	go func() { defer wg.Done(); e.create("plainbox", "--image", "minimal") }()
	wg.Wait()
	if t.Failed() {
		return
	}
	natbox, _ := e.show("natbox")
	plainbox, _ := e.show("plainbox")

	t.Run("nat guest reaches upstream through masquerade", func(t *testing.T) {
		e := e.with(t)
		out := e.ssh("natbox", fetch)
		if !strings.Contains(out, "hello-from-upstream") {
			t.Fatalf("curl from natbox = %q", out)
		}
		reqs := up.requests()
		if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "192.0.2.2:") {
			t.Fatalf("upstream saw %v, want one request from 192.0.2.2 (the host side, masqueraded)", reqs)
		}
		if rules := natRules(t, e); !strings.Contains(rules, "vm:"+natbox.ID) || strings.Contains(rules, "vm:"+plainbox.ID) {
			t.Fatalf("nft table:\n%s\nwant rules for natbox only", rules)
		}
	})

	t.Run("guest without nat cannot reach upstream", func(t *testing.T) {
		e := e.with(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		before := len(up.requests())
		_, stderr, err := e.banger(ctx, "vm", "ssh", "plainbox", "--", fetch)
		if !unreachable(err, stderr) {
			t.Fatalf("fetch from plainbox: %v, %q; want it unreachable", err, stderr)
		}
		if n := len(up.requests()); n != before {
			t.Fatalf("upstream saw %d new requests from plainbox", n-before)
		}
	})

	t.Run("dns", func(t *testing.T) {
		e := e.with(t)
		r := query(t, e, "natbox.vm", mdns.TypeA)
		if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != natbox.IP || !r.Authoritative {
			t.Fatalf("natbox.vm A = %v", r)
		}
		if r := query(t, e, "nosuch.vm", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
			t.Fatalf("nosuch.vm rcode = %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
		}
		if got := strings.Fields(e.ssh("natbox", "getent", "hosts", "plainbox.vm")); len(got) == 0 || got[0] != plainbox.IP {
			t.Fatalf("natbox resolving plainbox.vm = %v, want %s", got, plainbox.IP)
		}
		if got := strings.Fields(e.ssh("plainbox", "getent", "hosts", "outside.example")); len(got) == 0 || got[0] != "192.0.2.1" {
			t.Fatalf("plainbox resolving outside.example through the upstream = %v, want 192.0.2.1", got)
		}
	})

	t.Run("tap pool", func(t *testing.T) {
		e := e.with(t)
		if !strings.HasPrefix(natbox.TAP, "tap-pool-") {
			t.Errorf("natbox tap = %q, want one taken from the pool", natbox.TAP)
		}
		deadline := time.Now().Add(10 * time.Second)
		for idle := 0; idle < 2; {
			idle = 0
			for _, l := range e.links() {
				if strings.HasPrefix(l, "tap-pool-") && l != natbox.TAP && l != plainbox.TAP {
					idle++
				}
			}
			if idle < 2 && time.Now().After(deadline) {
				t.Fatalf("idle pool taps = %d, want 2 after refill: %v", idle, e.links())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("private ports are closed between guests, open to the host", func(t *testing.T) {
		e := e.with(t)
		// A second sshd stands in for the opencode server on 4096.
		e.ssh("plainbox", "/usr/sbin/sshd", "-p", "4096")
		probe := func(port string) string {
			return strings.TrimSpace(e.ssh("natbox", "bash", "-c",
				fmt.Sprintf("'timeout 5 bash -c \"exec 3<>/dev/tcp/%s/%s\" 2>/dev/null && echo open || echo closed'", plainbox.IP, port)))
		}
		if got := probe("22"); got != "open" {
			t.Fatalf("natbox to plainbox:22 = %s, want open (guests reach each other)", got)
		}
		if got := probe("4096"); got != "closed" {
			t.Fatalf("natbox to plainbox:4096 = %s, want closed (a private port)", got)
		}
		// Nor through the host: natbox sends plainbox's packets to the
		// bridge address, and the host (forwarding on for NAT) routes
		// them back out of the bridge.
		mac, err := vmtest.Command("ip", "netns", "exec", e.ns.Name, "cat", "/sys/class/net/banger0/address").Output()
		if err != nil {
			t.Fatalf("reading the bridge's MAC: %v", err)
		}
		e.ssh("natbox", "ip", "neigh", "replace", plainbox.IP, "lladdr", strings.TrimSpace(string(mac)), "dev", "eth0", "nud", "permanent")
		if got := probe("22"); got != "open" {
			t.Fatalf("natbox to plainbox:22 through the host = %s, want open (the path works)", got)
		}
		if got := probe("4096"); got != "closed" {
			t.Fatalf("natbox to plainbox:4096 through the host = %s, want closed", got)
		}
		e.ssh("natbox", "ip", "neigh", "del", plainbox.IP, "dev", "eth0")

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := e.ns.Dial(ctx, "tcp", net.JoinHostPort(plainbox.IP, "4096"))
		if err != nil {
			t.Fatalf("host to plainbox:4096: %v, want open", err)
		}
		c.Close()
		for _, fam := range []string{"bridge", "inet"} {
			if out, err := vmtest.Command("ip", "netns", "exec", e.ns.Name, "nft", "list", "table", fam, "banger").CombinedOutput(); err != nil || !strings.Contains(string(out), "4096") {
				t.Fatalf("nft table %s banger: %v\n%s", fam, err, out)
			}
		}
		d, _, err := e.banger(ctx, "doctor")
		if !strings.Contains(d, "ports [4096] reachable from the host only") {
			t.Errorf("doctor does not report the isolation (%v):\n%s", err, d)
		}
	})

	t.Run("a restart that releases a VM keeps the pool at its size", func(t *testing.T) {
		e := e.with(t)
		// plainbox's hypervisor dies while bangerd is down: the restarted
		// daemon releases its pool TAP device, and must adopt before it
		// refills, or the pool grows past tap_pool_size.
		e.killDaemon()
		var plainPID int
		for _, p := range e.hypervisorPIDs() {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(cmd), plainbox.ID) {
				plainPID = p
			}
		}
		if plainPID == 0 {
			t.Fatalf("no hypervisor of plainbox among %v", e.hypervisorPIDs())
		}
		syscall.Kill(plainPID, syscall.SIGKILL)
		e.startDaemon()
		idle := func() (n int) {
			for _, l := range e.links() {
				if strings.HasPrefix(l, "tap-pool-") && l != natbox.TAP {
					n++
				}
			}
			return n
		}
		deadline := time.Now().Add(10 * time.Second)
		for idle() != 2 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second) // a late refill would show now
		if n := idle(); n != 2 {
			t.Errorf("idle pool taps after the restart = %d, want tap_pool_size (2): %v", n, e.links())
		}
		if got, _ := e.show("plainbox"); got.State == "running" {
			t.Errorf("plainbox after its hypervisor died with bangerd down: %s, want stopped or error", got.State)
		}
	})

	t.Run("no-nat and delete remove the rules", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "set", "--no-nat", "natbox")
		if rules := natRules(t, e); strings.Contains(rules, "vm:"+natbox.ID) {
			t.Fatalf("rules after --no-nat:\n%s", rules)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, stderr, err := e.banger(ctx, "vm", "ssh", "natbox", "--", fetch); !unreachable(err, stderr) {
			t.Fatalf("fetch after --no-nat: %v, %q; want it unreachable", err, stderr)
		}
		e.must("vm", "set", "--nat", "natbox")
		if rules := natRules(t, e); !strings.Contains(rules, "vm:"+natbox.ID) {
			t.Fatalf("rules after --nat again:\n%s", rules)
		}
		e.must("vm", "delete", "--force", "natbox", "plainbox")
		if rules := natRules(t, e); strings.Contains(rules, "vm:") {
			t.Fatalf("rules after delete:\n%s", rules)
		}
		for _, l := range e.links() {
			if l == natbox.TAP || l == plainbox.TAP {
				t.Errorf("tap %s left after delete", l)
			}
		}
	})
}
