package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/vmtest"
)

// egressNet is the outside world of TestEgress, in the upstream namespace:
// HTTP on two public addresses with names in the upstream resolver, on a
// 10/8 address and on the cloud metadata address; and the names the
// resolver was asked for.
type egressNet struct {
	mu    sync.Mutex
	asked []string
}

const (
	allowedIP  = "203.0.113.10"    // allowed.test
	deniedIP   = "198.51.100.10"   // denied.test and alias.test (a CNAME)
	lanIP      = "10.20.0.5"       // a LAN server
	metadataIP = "169.254.169.254" // cloud metadata
	hostPort   = "8081"            // an HTTP server on the host's own uplink address, 192.0.2.2
)

func newEgressNet(t *testing.T, e *env) *egressNet {
	n := &egressNet{}
	u := vmtest.NewNS(t)
	for _, args := range [][]string{
		{"-n", e.ns.Name, "link", "add", "vh", "type", "veth", "peer", "name", "vu", "netns", u.Name},
		{"-n", e.ns.Name, "addr", "add", "192.0.2.2/24", "dev", "vh"},
		{"-n", e.ns.Name, "link", "set", "vh", "up"},
		{"-n", e.ns.Name, "route", "add", "default", "via", "192.0.2.1"},
		{"-n", u.Name, "addr", "add", "192.0.2.1/24", "dev", "vu"},
		{"-n", u.Name, "link", "set", "vu", "up"},
		{"-n", u.Name, "link", "set", "lo", "up"},
	} {
		if out, err := vmtest.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ip := range []string{allowedIP, deniedIP, lanIP, metadataIP} {
		if out, err := vmtest.Command("ip", "-n", u.Name, "addr", "add", ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("adding %s upstream: %v: %s", ip, err, out)
		}
	}
	serve := func(ns *vmtest.NS, addr, body string) {
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatalf("listening on %s: %v", addr, err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	for _, ip := range []string{allowedIP, deniedIP, lanIP, metadataIP} {
		serve(u, ip+":80", "hello-from-"+ip)
	}
	serve(e.ns, "192.0.2.2:"+hostPort, "hello-from-host")

	var pc net.PacketConn
	if err := u.Do(func() (err error) { pc, err = net.ListenPacket("udp", "192.0.2.1:53"); return err }); err != nil {
		t.Fatalf("listening for DNS upstream: %v", err)
	}
	zone := map[string]string{
		"allowed.test.": "allowed.test. 300 IN A " + allowedIP,
		"denied.test.":  "denied.test. 300 IN A " + deniedIP,
		"lan.test.":     "lan.test. 300 IN A " + lanIP,
	}
	dnsSrv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		n.mu.Lock()
		n.asked = append(n.asked, name)
		n.mu.Unlock()
		switch {
		case name == "alias.test." && q.Qtype == mdns.TypeA:
			c, _ := mdns.NewRR("alias.test. 300 IN CNAME denied.test.")
			a, _ := mdns.NewRR(zone["denied.test."])
			m.Answer = append(m.Answer, c, a)
		case zone[name] != "" && q.Qtype == mdns.TypeA:
			rr, _ := mdns.NewRR(zone[name])
			m.Answer = append(m.Answer, rr)
		case zone[name] != "":
		default:
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go dnsSrv.ActivateAndServe()
	t.Cleanup(func() { dnsSrv.Shutdown() })
	return n
}

func (n *egressNet) wasAsked(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Contains(n.asked, name)
}

// reach runs, in one ssh session and in parallel, a fetch of each target
// ("IP:PORT", or "resolve NAME") and reports which succeeded: the guest's
// view of what its egress policy lets through. A refused connection
// times out (the policy drops), so each probe is bounded by 3 s.
func reach(t *testing.T, e *env, vm string, targets ...string) map[string]bool {
	t.Helper()
	var script strings.Builder
	for i, tg := range targets {
		if name, ok := strings.CutPrefix(tg, "resolve "); ok {
			fmt.Fprintf(&script, `( getent hosts %s >/dev/null && echo "%d ok" || echo "%d no" ) & `, name, i, i)
			continue
		}
		host, port, _ := strings.Cut(tg, ":")
		fmt.Fprintf(&script, `( timeout 3 bash -c 'exec 3<>/dev/tcp/%s/%s && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null | grep -q hello-from && echo "%d ok" || echo "%d no" ) & `, host, port, i, i)
	}
	script.WriteString("wait")
	out := e.ssh(vm, "bash", "-c", shellQuote(script.String()))
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var i int
		var verdict string
		if _, err := fmt.Sscanf(line, "%d %s", &i, &verdict); err == nil && i >= 0 && i < len(targets) {
			got[targets[i]] = verdict == "ok"
		}
	}
	if len(got) != len(targets) {
		t.Fatalf("probe output %q: want one verdict per target %v", out, targets)
	}
	return got
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// wantReach checks a probe against the targets that must be reachable;
// every other probed target must not be.
func wantReach(t *testing.T, phase string, got map[string]bool, reachable ...string) {
	t.Helper()
	var bad []string
	for tg, ok := range got {
		if ok != slices.Contains(reachable, tg) {
			want := "unreachable"
			if !ok {
				want = "reachable"
			}
			bad = append(bad, fmt.Sprintf("%s should be %s", tg, want))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s: %s", phase, strings.Join(bad, "; "))
	}
}

// TestEgress boots a NAT guest behind an upstream namespace standing in for
// the internet and a LAN, and walks its egress policy through default,
// allow, open and deny, each applied to the running VM at once.
func TestEgress(t *testing.T) {
	e := newEnvConfig(t, "dns_upstreams = [\"192.0.2.1:53\"]\nwarm_after_create = false\n")
	up := newEgressNet(t, e)
	v := e.create("eg", "--image", "minimal", "--nat")
	allowed, denied, lan, meta, host := allowedIP+":80", deniedIP+":80", lanIP+":80", metadataIP+":80", "192.0.2.2:"+hostPort
	everything := []string{allowed, denied, lan, meta, host, "resolve allowed.test", "resolve denied.test"}

	t.Run("default: the public internet, not the LAN, metadata or the host", func(t *testing.T) {
		e := e.with(t)
		wantReach(t, "default", reach(t, e, "eg", everything...), allowed, denied, "resolve allowed.test", "resolve denied.test")
		if got, _ := e.show("eg"); got.Egress != "default" {
			t.Errorf("egress = %q, want default", got.Egress)
		}
	})

	t.Run("allow allowed.test", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "set", "--egress-allow", "allowed.test", "eg")
		// Its address is closed until the guest resolves the name.
		wantReach(t, "allow, before resolving", reach(t, e, "eg", allowed, denied, lan), nil...)
		wantReach(t, "allow, names", reach(t, e, "eg", "resolve allowed.test", "resolve denied.test", "resolve alias.test"), "resolve allowed.test")
		wantReach(t, "allow, after resolving", reach(t, e, "eg", allowed, denied, lan, meta, host), allowed)
		// A question straight to the upstream resolver is dropped: the
		// upstream never sees it.
		e.ssh("eg", "bash", "-c", shellQuote(`printf '\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06direct\x04test\x00\x00\x01\x00\x01' > /dev/udp/192.0.2.1/53; sleep 1`))
		if up.wasAsked("direct.test.") {
			t.Errorf("the guest's own DNS query reached the upstream resolver")
		}
		out := e.must("vm", "show", "eg")
		for _, want := range []string{"egress:", "allow allowed.test", "egress refused:", "unlisted", "denied.test"} {
			if !strings.Contains(out, want) {
				t.Errorf("vm show lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("open lifts everything at once", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "set", "--egress-open", "eg")
		wantReach(t, "open", reach(t, e, "eg", everything...), everything...)
	})

	t.Run("deny denied.test", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "set", "--egress-deny", "denied.test", "eg")
		wantReach(t, "deny", reach(t, e, "eg", append(everything, "resolve alias.test")...), allowed, "resolve allowed.test")
	})

	t.Run("delete leaves no rule or set", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "delete", "--force", "eg")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, fam := range []string{"ip", "bridge"} {
			out, _ := e.ns.Command(ctx, "nft", "list", "table", fam, "banger_egress").CombinedOutput()
			if strings.Contains(string(out), v.ID) {
				t.Errorf("table %s banger_egress still names the deleted VM:\n%s", fam, out)
			}
		}
	})
}
