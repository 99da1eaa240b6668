package egress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// hostEnv carries the fixture's namespace names to the test binary that
// runs inside the "host" namespace (see inHost).
const hostEnv = "BANGER_EGRESS_FIXTURE"

// needNamespaces skips unless BANGER_VM_TESTS=1 and then fails on a
// missing prerequisite.
func needNamespaces(t testing.TB) {
	t.Helper()
	vmtest.Require(t, "this egress test (network namespaces and nftables)", vmtest.Root(), vmtest.Tool("nft", "nftables"))
}

// fixture is the network the real tests run in: H, the host, with bridge
// br0 (172.30.9.1/24) and an uplink (203.0.113.2) to U, the upstream
// network standing in for the internet and the LAN; G (172.30.9.2) and P
// (172.30.9.3), two guests on br0. U serves HTTP on 192.0.2.10
// (allowed.test), 198.51.100.10 (denied.test), 10.20.0.5 (a LAN server,
// lan.test) and 169.254.169.254 (cloud metadata), and DNS on 203.0.113.1.
// H serves HTTP on its uplink and bridge addresses, port 8080, and P on 80.
type fixture struct {
	h, g, p, u *vmtest.NS
	udp        chan string // payloads received on spoofDst
}

var (
	hostIP    = netip.MustParseAddr("203.0.113.2")
	upDNS     = "203.0.113.1:53"
	gateway   = netip.MustParseAddr("172.30.9.1")
	guestIP   = netip.MustParseAddr("172.30.9.2")
	peerIP    = netip.MustParseAddr("172.30.9.3")
	subnet    = netip.MustParsePrefix("172.30.9.0/24")
	allowedIP = "192.0.2.10"
	deniedIP  = "198.51.100.10"
	lanIP     = "10.20.0.5"
	metaIP    = "169.254.169.254"
	hostIP6   = "[fd00:9::1]:8080" // the host on the bridge, over IPv6
	spoofDst  = netip.MustParseAddrPort(deniedIP + ":9999")
)

// inHost runs the calling test (or benchmark) again in a test binary
// started inside a new "host" namespace, so that everything the test's
// process opens without entering a namespace (the DNS server's upstream
// sockets above all) lives there and nothing reaches the machine's own
// network. The parent makes every namespace and removes them, whatever the
// child does. It returns nil in the parent, which is then done, and the
// fixture in the child. args select the test in the child.
func inHost(tb testing.TB, args ...string) *fixture {
	tb.Helper()
	if env := os.Getenv(hostEnv); env != "" {
		names := strings.Split(env, ",")
		if len(names) != 4 {
			tb.Fatalf("%s=%q, want four namespace names", hostEnv, env)
		}
		fx := &fixture{h: &vmtest.NS{Name: names[0]}, g: &vmtest.NS{Name: names[1]}, p: &vmtest.NS{Name: names[2]}, u: &vmtest.NS{Name: names[3]}}
		fx.setup(tb)
		return fx
	}
	needNamespaces(tb)
	h, g, p, u := vmtest.NewNS(tb), vmtest.NewNS(tb), vmtest.NewNS(tb), vmtest.NewNS(tb)
	if len(args) == 0 {
		args = []string{"-test.run=^" + tb.Name() + "$", "-test.v"}
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.Name, os.Args[0], "-test.count=1"}, args...)...)
	cmd.Env = append(os.Environ(), hostEnv+"="+strings.Join([]string{h.Name, g.Name, p.Name, u.Name}, ","))
	var out []byte
	var err error
	if len(args) > 0 && strings.HasPrefix(args[0], "-test.run=^$") {
		// A benchmark: its lines go straight to the output, untruncated.
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Run()
	} else {
		out, err = cmd.CombinedOutput()
		tb.Logf("inside the host namespace:\n%s", out)
	}
	if err != nil {
		tb.Fatalf("%s inside the host namespace: %v", tb.Name(), err)
	}
	return nil
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runner.Default.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func (fx *fixture) setup(t testing.TB) {
	g, p, u := fx.g.Name, fx.p.Name, fx.u.Name
	for _, argv := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", "172.30.9.1/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"ip", "link", "add", "vg", "type", "veth", "peer", "name", "eth0", "netns", g},
		{"ip", "link", "set", "vg", "master", "br0", "up"},
		{"ip", "-n", g, "addr", "add", "172.30.9.2/24", "dev", "eth0"},
		{"ip", "-n", g, "link", "set", "eth0", "up"},
		{"ip", "-n", g, "route", "add", "default", "via", "172.30.9.1"},
		{"ip", "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", p},
		{"ip", "link", "set", "vp", "master", "br0", "up"},
		{"ip", "-n", p, "addr", "add", "172.30.9.3/24", "dev", "eth0"},
		{"ip", "-n", p, "link", "set", "eth0", "up"},
		{"ip", "-n", p, "route", "add", "default", "via", "172.30.9.1"},
		{"ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", u},
		{"ip", "addr", "add", "203.0.113.2/24", "dev", "up0"},
		{"ip", "link", "set", "up0", "up"},
		{"ip", "route", "add", "default", "via", "203.0.113.1"},
		{"ip", "-n", u, "addr", "add", "203.0.113.1/24", "dev", "eth0"},
		{"ip", "-n", u, "link", "set", "eth0", "up"},
		{"ip", "-n", u, "addr", "add", allowedIP + "/32", "dev", "lo"},
		{"ip", "-n", u, "addr", "add", deniedIP + "/32", "dev", "lo"},
		{"ip", "-n", u, "addr", "add", lanIP + "/32", "dev", "lo"},
		{"ip", "-n", u, "addr", "add", metaIP + "/32", "dev", "lo"},
		{"ip", "addr", "add", "fd00:9::1/64", "dev", "br0", "nodad"},
		{"ip", "-n", g, "addr", "add", "fd00:9::2/64", "dev", "eth0", "nodad"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		run(t, argv[0], argv[1:]...)
	}
	for _, a := range []string{allowedIP, deniedIP, lanIP, metaIP} {
		serveHTTP(t, fx.u, a+":80")
	}
	serveHTTP(t, nil, hostIP.String()+":8080")
	serveHTTP(t, nil, gateway.String()+":8080")
	serveHTTP(t, nil, hostIP6)
	serveHTTP(t, fx.p, peerIP.String()+":80")
	fx.serveUpstreamDNS(t)
	fx.recvUDP(t)
}

// recvUDP records the payloads that reach U on spoofDst.
func (fx *fixture) recvUDP(t testing.TB) {
	var pc net.PacketConn
	if err := fx.u.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", spoofDst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	fx.udp = make(chan string, 64)
	go func() {
		buf := make([]byte, 512)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case fx.udp <- string(buf[:n]):
			default:
			}
		}
	}()
}

// spoofed sends a UDP packet from G with P's address as its source, as a
// guest that wants another guest's policy would, and reports whether it
// reached U.
func (fx *fixture) spoofed(t testing.TB, marker string) bool {
	t.Helper()
	payload := []byte(marker)
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45 // IPv4, 20-byte header; the kernel fills length, id and checksum
	pkt[8], pkt[9] = 64, 17
	src, dst := peerIP.As4(), spoofDst.Addr().As4()
	copy(pkt[12:16], src[:])
	copy(pkt[16:20], dst[:])
	binary.BigEndian.PutUint16(pkt[20:], 40000)
	binary.BigEndian.PutUint16(pkt[22:], spoofDst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	if err := fx.g.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst})
	}); err != nil {
		t.Fatalf("sending a spoofed packet from the guest: %v", err)
	}
	timeout := time.After(time.Second)
	for {
		select {
		case got := <-fx.udp:
			if got == marker {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// serveHTTP answers every request with the listen address, in ns (nil: here).
func serveHTTP(t testing.TB, ns *vmtest.NS, addr string) {
	t.Helper()
	var ln net.Listener
	listen := func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}
	var err error
	if ns == nil {
		err = listen()
	} else {
		err = ns.Do(listen)
	}
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, addr) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// upstreamZone is what the upstream resolver knows.
func upstreamAnswer(q mdns.Question) []mdns.RR {
	name := strings.ToLower(q.Name)
	rr := func(s string) mdns.RR {
		r, err := mdns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return r
	}
	a := func(n, ip string) []mdns.RR { return []mdns.RR{rr(n + " 5 IN A " + ip)} }
	switch {
	case q.Qtype != mdns.TypeA:
		return nil
	case name == "allowed.test.":
		return a(name, allowedIP)
	case name == "denied.test.":
		return a(name, deniedIP)
	case name == "lan.test.":
		return a(name, lanIP)
	case name == "alias.test.":
		return append([]mdns.RR{rr("alias.test. 5 IN CNAME denied.test.")}, a("denied.test.", deniedIP)...)
	case strings.HasSuffix(name, ".bench.test."):
		// nN.bench.test: a different address in 198.18.0.0/15 for every N.
		var n int
		if _, err := fmt.Sscanf(name, "n%d.bench.test.", &n); err == nil && n >= 0 && n < 1<<16 {
			return a(name, fmt.Sprintf("198.18.%d.%d", n>>8, n&0xff))
		}
	}
	return nil
}

func (fx *fixture) serveUpstreamDNS(t testing.TB) {
	var pc net.PacketConn
	if err := fx.u.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", upDNS)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		m.Answer = upstreamAnswer(req.Question[0])
		if m.Answer == nil && req.Question[0].Qtype == mdns.TypeA {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
}

// fetch GETs http://addr/ from ns and checks the body names addr.
func fetch(ns *vmtest.NS, addr string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: ns.Dial}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if string(body) != addr && string(body) != addr+":80" {
		return fmt.Errorf("GET http://%s/ = %q, want %q", addr, body, addr)
	}
	return nil
}

// ask queries server from ns for name's A records.
func ask(ns *vmtest.NS, server, name string, timeout time.Duration) (*mdns.Msg, error) {
	var r *mdns.Msg
	err := ns.Do(func() error {
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
		var err error
		r, _, err = (&mdns.Client{Timeout: timeout}).Exchange(m, server)
		return err
	})
	return r, err
}

func answerAddrs(r *mdns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// logBuffer collects log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// world is the fixture with banger's parts running in H: NAT for both
// guests, the egress manager and banger's DNS server on the bridge
// address, forwarding to U's resolver.
type world struct {
	*fixture
	t   testing.TB
	m   *Manager
	dns *dns.Server
	sw  *switchFilter
	log *logBuffer
}

// switchFilter lets a test hand banger's DNS server to another manager, as
// a restarted daemon would.
type switchFilter struct {
	mu sync.Mutex
	f  dns.Filter
}

func (s *switchFilter) get() dns.Filter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f
}

func (s *switchFilter) set(f dns.Filter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f = f
}

func (s *switchFilter) Query(c netip.Addr, n string) dns.Decision { return s.get().Query(c, n) }

func (s *switchFilter) Answer(c netip.Addr, n string, a dns.Answer) (dns.Verdict, error) {
	return s.get().Answer(c, n, a)
}

func (fx *fixture) start(t testing.TB) *world {
	ctx := context.Background()
	lb := &logBuffer{}
	w := &world{fixture: fx, t: t, log: lb}
	w.m = &Manager{Table: "banger_egress", Bridge: "br0", Subnet: subnet, Log: slog.New(slog.NewTextHandler(io.MultiWriter(lb, testWriter{t}), nil)), LogEvery: time.Hour}
	w.sw = &switchFilter{f: w.m}
	w.dns = &dns.Server{Addrs: []string{gateway.String() + ":53"}, Upstreams: []string{upDNS}, Filter: w.sw, Log: w.m.Log,
		Lookup: func(name string) (netip.Addr, bool) { return peerIP, name == "peer" }}
	w.m.Resolver = w.dns
	if err := w.dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.dns.Close() })
	n := &nat.Manager{Bridge: "br0", Subnet: subnet}
	for id, ip := range map[string]netip.Addr{"vm1": guestIP, "vm2": peerIP} {
		if err := n.Enable(ctx, id, ip); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (w *world) reach(what, addr string, want bool) {
	w.t.Helper()
	err := fetch(w.g, addr)
	if want && err != nil {
		w.t.Errorf("%s: guest GET %s = %v, want it reachable", what, addr, err)
	}
	if !want && err == nil {
		w.t.Errorf("%s: guest GET %s succeeded, want it refused", what, addr)
	}
}

// resolves checks what banger's DNS tells the guest about name: its
// addresses, or NXDOMAIN for want nil.
func (w *world) resolves(what, name string, want []string) {
	w.t.Helper()
	r, err := ask(w.g, gateway.String()+":53", name, 2*time.Second)
	if err != nil {
		w.t.Errorf("%s: guest query %s via banger = %v, want an answer", what, name, err)
		return
	}
	if want == nil {
		if r.Rcode != mdns.RcodeNameError {
			w.t.Errorf("%s: guest query %s via banger = %s %v, want NXDOMAIN", what, name, mdns.RcodeToString[r.Rcode], answerAddrs(r))
		}
		return
	}
	if got := answerAddrs(r); r.Rcode != mdns.RcodeSuccess || !slices.Equal(got, want) {
		w.t.Errorf("%s: guest query %s via banger = %s %v, want %v", what, name, mdns.RcodeToString[r.Rcode], got, want)
	}
}

// direct asks U's resolver straight from the guest.
func (w *world) direct(what string, want bool) {
	w.t.Helper()
	r, err := ask(w.g, upDNS, "allowed.test", time.Second)
	if want && (err != nil || len(answerAddrs(r)) != 1) {
		w.t.Errorf("%s: guest query straight to %s = %v, want an answer", what, upDNS, err)
	}
	if !want && err == nil {
		w.t.Errorf("%s: guest query straight to %s answered, want it dropped", what, upDNS)
	}
}

func (w *world) apply(p Policy) {
	w.t.Helper()
	if err := w.m.Apply(context.Background(), VM{ID: "vm1", IP: guestIP, TAP: "vg", Policy: p}); err != nil {
		w.t.Fatalf("Apply(vm1, %s) = %v", p, err)
	}
}

func (w *world) table() string {
	out, _ := runner.Default.Run(context.Background(), "nft", "list", "table", "ip", "banger_egress")
	return string(out)
}

func mustList(t testing.TB, s string) []Entry {
	t.Helper()
	l, err := ParseList(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func hasDenial(ds []Denial, what string, r Reason) bool {
	return slices.ContainsFunc(ds, func(d Denial) bool { return (d.Name == what || d.Addr == what) && d.Reason == r })
}

// TestEgressReal proves the policies with the real nft, banger's DNS server
// and NAT, in namespaces the test makes (see fixture).
func TestEgressReal(t *testing.T) {
	fx := inHost(t)
	if fx == nil {
		return
	}
	ctx := context.Background()
	w := fx.start(t)
	public := []string{allowedIP, deniedIP}
	closed := []string{lanIP, metaIP, hostIP.String() + ":8080", gateway.String() + ":8080", hostIP6}

	// Control: with NAT and no policy, the guest reaches everything, so
	// every refusal below is the policy's.
	for _, a := range append(public, closed...) {
		w.reach("no policy", a, true)
	}
	w.direct("no policy", true)
	if !fx.spoofed(t, "control") {
		t.Fatalf("no policy: a packet from the guest with the other guest's address did not reach upstream, so the spoofing checks below prove nothing")
	}

	// The default.
	w.apply(Policy{})
	w.resolves("default", "allowed.test", []string{allowedIP})
	for _, a := range public {
		w.reach("default", a, true)
	}
	for _, a := range closed {
		w.reach("default", a, false)
	}
	w.reach("default: the other guest, on the bridge", peerIP.String(), true)
	w.resolves("default: the other guest by name", "peer.vm", []string{peerIP.String()})
	w.direct("default", true)
	if fx.spoofed(t, "default") {
		t.Errorf("default: a packet from the guest with the other guest's address (which has no policy) reached upstream")
	}

	// A connection opened under one policy is judged again under the next.
	conn, err := fx.g.Dial(ctx, "tcp", deniedIP+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func() error {
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("default: GET on a kept-alive connection to %s = %v", deniedIP, err)
	}

	// An allow list.
	w.apply(Policy{Mode: ModeAllow, Allow: mustList(t, "allowed.test,lan.test")})
	if err := get(); err == nil {
		t.Errorf("allow: GET on a connection to %s opened before the policy succeeded, want it cut", deniedIP)
	}
	w.reach("allow: allowed.test's address before the guest resolved it", allowedIP, false)
	w.resolves("allow", "denied.test", nil)
	w.reach("allow: denied.test's address", deniedIP, false)
	w.resolves("allow", "allowed.test", []string{allowedIP})
	w.reach("allow: allowed.test, just resolved", allowedIP, true)
	w.resolves("allow: lan.test is listed", "lan.test", []string{lanIP})
	w.reach("allow: a listed name's private address", lanIP, false)
	for _, a := range closed {
		w.reach("allow", a, false)
	}
	w.direct("allow", false)
	if fx.spoofed(t, "allow") {
		t.Errorf("allow: a packet from the guest with the other guest's address (which has no policy) reached upstream")
	}
	w.reach("allow: the other guest, on the bridge", peerIP.String(), true)
	w.resolves("allow: the other guest by name", "peer.vm", []string{peerIP.String()})
	if set := run(t, "nft", "list", "set", "ip", "banger_egress", "v_vm1_adns"); !strings.Contains(set, allowedIP+" timeout 30s") {
		t.Errorf("allow: v_vm1_adns = %s, want %s with the 30 s floor (its TTL is 5 s)", set, allowedIP)
	}
	st, err := w.m.Stats(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("allow: stats %+v", st)
	for _, r := range []Reason{ReasonUnlisted, ReasonPrivate, ReasonHost, ReasonResolver, ReasonSpoofed} {
		if st.Refused[r.String()].Packets == 0 {
			t.Errorf("allow: Stats().Refused[%s] = %+v, want packets", r, st.Refused[r.String()])
		}
	}
	for _, d := range []struct {
		what string
		r    Reason
	}{{"denied.test", ReasonUnlisted}, {deniedIP + ":80/tcp", ReasonUnlisted}, {lanIP + ":80/tcp", ReasonPrivate},
		{hostIP.String() + ":8080/tcp", ReasonHost}, {upDNS + "/udp", ReasonResolver}} {
		if !hasDenial(st.Recent, d.what, d.r) {
			t.Errorf("allow: Stats().Recent = %v, want %s (%s)", st.Recent, d.what, d.r)
		}
	}
	if st.NamesRefused != 1 || st.Learned != 2 {
		t.Errorf("allow: Stats() names refused %d, learned %d; want 1 and 2", st.NamesRefused, st.Learned)
	}

	// Open lifts it all at once and leaves nothing of vm1 in the table.
	w.apply(Open())
	for _, a := range append(public, closed...) {
		w.reach("open", a, true)
	}
	w.resolves("open", "denied.test", []string{deniedIP})
	w.direct("open", true)
	if !fx.spoofed(t, "open") {
		t.Errorf("open: a spoofed packet did not reach upstream, want no filtering at all")
	}
	if tb := w.table(); strings.Contains(tb, "v_vm1") || strings.Contains(tb, "vm:vm1") {
		t.Errorf("open: table still holds vm1:\n%s", tb)
	}
	if _, err := w.m.Stats(ctx, "vm1"); err == nil {
		t.Errorf("open: Stats(vm1) = nil error, want ErrNoPolicy")
	}

	// A deny list: the reverse.
	w.apply(Policy{Mode: ModeDeny, Deny: mustList(t, "denied.test")})
	w.reach("deny: denied.test's address, never resolved by the guest", deniedIP, false)
	w.resolves("deny", "denied.test", nil)
	w.resolves("deny: a CNAME to denied.test", "alias.test", nil)
	w.resolves("deny", "allowed.test", []string{allowedIP})
	w.reach("deny", allowedIP, true)
	for _, a := range closed {
		w.reach("deny", a, false)
	}
	w.direct("deny", false)
	st, err = w.m.Stats(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("deny: stats %+v", st)
	if st.Refused["denied"].Packets == 0 || !hasDenial(st.Recent, deniedIP+":80/tcp", ReasonDenied) ||
		!hasDenial(st.Recent, "denied.test", ReasonDenied) || !hasDenial(st.Recent, "alias.test", ReasonDenied) {
		t.Errorf("deny: Stats() = %+v, want denied packets, %s:80/tcp, denied.test and alias.test", st, deniedIP)
	}

	// Denials reach the log, rate-limited: LogEvery is an hour here, so
	// vm1 logged once under allow and once under deny (open removed it
	// and all it kept), at its first refused name each time.
	if got := w.log.lines("egress refused"); len(got) != 2 {
		t.Errorf("log has %d 'egress refused' lines, want 2 (rate-limited): %q", len(got), got)
	}

	// Reconcile: vm2 goes, vm1 stays as it is, even for a new manager (a
	// restarted daemon), and keeps its learned addresses and generation.
	if err := w.m.Apply(ctx, VM{ID: "vm2", IP: peerIP, TAP: "vp"}); err != nil {
		t.Fatal(err)
	}
	vm1 := VM{ID: "vm1", IP: guestIP, TAP: "vg", Policy: Policy{Mode: ModeDeny, Deny: mustList(t, "denied.test")}}
	chain := run(t, "nft", "list", "chain", "ip", "banger_egress", "v_vm1_fwd")
	m2 := &Manager{Table: w.m.Table, Bridge: w.m.Bridge, Subnet: w.m.Subnet, Resolver: w.dns, Log: w.m.Log}
	for i, mgr := range []*Manager{w.m, m2} {
		if err := mgr.Reconcile(ctx, []VM{vm1}); err != nil {
			t.Fatalf("Reconcile #%d = %v", i+1, err)
		}
		if got := run(t, "nft", "list", "chain", "ip", "banger_egress", "v_vm1_fwd"); got != chain {
			t.Errorf("Reconcile #%d changed vm1's chain:\n%s\nwant\n%s", i+1, got, chain)
		}
		if tb := w.table(); strings.Contains(tb, "v_vm2") || !strings.Contains(tb, deniedIP+" timeout") {
			t.Errorf("Reconcile #%d: table = %s, want no vm2 and vm1's denied address kept", i+1, tb)
		}
	}
	w.sw.set(m2)
	w.reach("deny after reconcile", deniedIP, false)
	w.reach("deny after reconcile", allowedIP, true)

	// Removal leaves no set, counter, chain or rule of a VM.
	for i := range 2 {
		if err := m2.Remove(ctx, "vm1"); err != nil {
			t.Fatalf("Remove(vm1) #%d = %v", i+1, err)
		}
	}
	tb := w.table()
	if strings.Contains(tb, "v_") || strings.Contains(tb, "vm:") || strings.Contains(tb, "jump") {
		t.Errorf("after Remove: table = %s, want only the base chains and the closed set", tb)
	}
	w.reach("after Remove", lanIP, true)
	if err := m2.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := run(t, "nft", "list", "tables"); strings.Contains(got, "banger_egress") {
		t.Errorf("after Teardown: nft list tables = %q", got)
	}
}

// TestEgressUserDNS: an unprivileged bangerd's DNS listens on the bridge
// address's port 10053, and its table ip <Table>_dns redirects port 53
// there; a filtered guest still reaches it on port 53 (the input chain sees
// the redirected port), and only because DNSPort says so. The DNS server
// forwards nothing, so this runs in the test's own process.
func TestEgressUserDNS(t *testing.T) {
	needNamespaces(t)
	ctx := context.Background()
	h, g := vmtest.NewNS(t), vmtest.NewNS(t)
	for _, argv := range [][]string{
		{"ip", "-n", h.Name, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", h.Name, "addr", "add", "172.30.9.1/24", "dev", "br0"},
		{"ip", "-n", h.Name, "link", "set", "br0", "up"},
		{"ip", "-n", h.Name, "link", "add", "vg", "type", "veth", "peer", "name", "eth0", "netns", g.Name},
		{"ip", "-n", h.Name, "link", "set", "vg", "master", "br0", "up"},
		{"ip", "-n", g.Name, "addr", "add", "172.30.9.2/24", "dev", "eth0"},
		{"ip", "-n", g.Name, "link", "set", "eth0", "up"},
	} {
		run(t, argv[0], argv[1:]...)
	}
	srv := &dns.Server{Addrs: []string{"172.30.9.1:10053"}, Upstreams: []string{}, Log: quiet(),
		Lookup: func(name string) (netip.Addr, bool) { return peerIP, name == "peer" }}
	if err := h.Do(srv.Start); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r := &dns.Redirect{R: h.Runner(), Table: "banger_u7_dns", Bridge: "br0", Gateway: gateway, Port: 10053}
	if err := r.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	works := func() bool {
		resp, err := ask(g, gateway.String()+":53", "peer.vm", time.Second)
		return err == nil && slices.Equal(answerAddrs(resp), []string{peerIP.String()})
	}
	if !works() {
		t.Fatalf("guest query peer.vm via %s:53 without a policy failed, want the redirect to answer", gateway)
	}
	allow := VM{ID: "vm1", IP: guestIP, TAP: "vg", Policy: Policy{Mode: ModeAllow, Allow: mustList(t, "allowed.test")}}
	for _, tt := range []struct {
		port int
		want bool
	}{{0, false}, {10053, true}} {
		m := &Manager{R: h.Runner(), Table: "banger_u7_egress", Bridge: "br0", Subnet: subnet, DNSPort: tt.port, Log: quiet()}
		if err := m.Apply(ctx, allow); err != nil {
			t.Fatal(err)
		}
		if got := works(); got != tt.want {
			t.Errorf("with DNSPort %d: guest query via %s:53 answered = %v, want %v", tt.port, gateway, got, tt.want)
		}
		if err := m.Teardown(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
