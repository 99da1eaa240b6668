package dns

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/vmtest"
)

// vmTable is a Lookup backed by a map that tests change at run time.
type vmTable struct {
	mu  sync.Mutex
	vms map[string]netip.Addr
}

func (v *vmTable) lookup(name string) (netip.Addr, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	a, ok := v.vms[name]
	return a, ok
}

func (v *vmTable) set(name string, a netip.Addr) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.vms[name] = a
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer runs a server on 127.0.0.1:0 and closes it when the test ends.
func startServer(t *testing.T, s *Server) *Server {
	t.Helper()
	if s.Addrs == nil {
		s.Addrs = []string{"127.0.0.1:0"}
	}
	if s.Log == nil {
		s.Log = quietLog()
	}
	if s.Timeout == 0 {
		s.Timeout = 500 * time.Millisecond
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start() = %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	})
	return s
}

func testVMs() *vmTable {
	return &vmTable{vms: map[string]netip.Addr{
		"testbox": netip.MustParseAddr("172.30.0.2"),
		"v6box":   netip.MustParseAddr("fd00::2"),
	}}
}

// query asks addr one question over network ("udp" or "tcp").
func query(t *testing.T, network, addr, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	c := &mdns.Client{Net: network, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query(%s %s) over %s: %v", name, mdns.TypeToString[qtype], network, err)
	}
	return r
}

// rdata renders the answer section as "TYPE value" strings.
func rdata(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		f := strings.Fields(rr.String())
		out = append(out, strings.Join(f[3:], " "))
	}
	return out
}

func hasSOA(rrs []mdns.RR) bool {
	for _, rr := range rrs {
		if _, ok := rr.(*mdns.SOA); ok {
			return true
		}
	}
	return false
}

func TestZone(t *testing.T) {
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{}})
	nsAnswer := "A 127.0.0.1"
	tests := []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string // rdata of the answer section, SOA serial excluded
		soa    bool     // SOA in authority
	}{
		{"testbox.vm.", mdns.TypeA, mdns.RcodeSuccess, []string{"A 172.30.0.2"}, false},
		{"TESTBOX.VM.", mdns.TypeA, mdns.RcodeSuccess, []string{"A 172.30.0.2"}, false},
		{"TestBox.Vm.", mdns.TypeANY, mdns.RcodeSuccess, []string{"A 172.30.0.2"}, false},
		{"testbox.vm.", mdns.TypeAAAA, mdns.RcodeSuccess, nil, true},
		{"testbox.vm.", mdns.TypeMX, mdns.RcodeSuccess, nil, true},
		{"v6box.vm.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"AAAA fd00::2"}, false},
		{"v6box.vm.", mdns.TypeA, mdns.RcodeSuccess, nil, true},
		{"unknown.vm.", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"a.b.vm.", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"a.testbox.vm.", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"vm.", mdns.TypeNS, mdns.RcodeSuccess, []string{"NS ns.vm."}, false},
		{"vm.", mdns.TypeA, mdns.RcodeSuccess, nil, true},
		{"ns.vm.", mdns.TypeA, mdns.RcodeSuccess, []string{nsAnswer}, false},
		{"NS.VM.", mdns.TypeAAAA, mdns.RcodeSuccess, nil, true},
	}
	for _, tt := range tests {
		q := fmt.Sprintf("query(%s %s)", tt.name, mdns.TypeToString[tt.qtype])
		r := query(t, "udp", s.Addr(), tt.name, tt.qtype)
		if r.Rcode != tt.rcode {
			t.Errorf("%s rcode = %s, want %s", q, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tt.rcode])
		}
		if !r.Authoritative {
			t.Errorf("%s AA = false, want true", q)
		}
		if got := rdata(r.Answer); !slices.Equal(got, tt.answer) {
			t.Errorf("%s answer = %q, want %q", q, got, tt.answer)
		}
		for _, rr := range r.Answer {
			if rr.Header().Ttl != DefaultTTL {
				t.Errorf("%s ttl = %d, want %d", q, rr.Header().Ttl, DefaultTTL)
			}
		}
		if got := hasSOA(r.Ns); got != tt.soa {
			t.Errorf("%s SOA in authority = %v, want %v", q, got, tt.soa)
		}
	}
}

func TestSOA(t *testing.T) {
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{}, TTL: 7})
	r := query(t, "udp", s.Addr(), "vm.", mdns.TypeSOA)
	if len(r.Answer) != 1 {
		t.Fatalf("query(vm. SOA) answer = %v, want one SOA", r.Answer)
	}
	soa, ok := r.Answer[0].(*mdns.SOA)
	if !ok {
		t.Fatalf("query(vm. SOA) answer = %v, want SOA", r.Answer[0])
	}
	checks := []struct {
		field string
		got   any
		want  any
	}{
		{"mname", soa.Ns, "ns.vm."},
		{"rname", soa.Mbox, "hostmaster.vm."},
		{"minimum", soa.Minttl, uint32(7)},
		{"ttl", soa.Hdr.Ttl, uint32(7)},
		{"AA", r.Authoritative, true},
		{"serial>0", soa.Serial > 0, true},
		{"refresh>retry", soa.Refresh > soa.Retry, true},
		{"expire>refresh", soa.Expire > soa.Refresh, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("query(vm. SOA) %s = %v, want %v", c.field, c.got, c.want)
		}
	}
}

func TestNSGlue(t *testing.T) {
	s := startServer(t, &Server{Upstreams: []string{}})
	r := query(t, "udp", s.Addr(), "vm.", mdns.TypeNS)
	if got, want := rdata(r.Extra), []string{"A 127.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("query(vm. NS) additional = %q, want %q", got, want)
	}
}

func TestTCP(t *testing.T) {
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{}})
	r := query(t, "tcp", s.Addr(), "testbox.vm.", mdns.TypeA)
	if got, want := rdata(r.Answer), []string{"A 172.30.0.2"}; !slices.Equal(got, want) || !r.Authoritative {
		t.Errorf("query(testbox.vm. A) over tcp = %q AA=%v, want %q AA=true", got, r.Authoritative, want)
	}
}

func TestLookupChangesAtRunTime(t *testing.T) {
	vms := testVMs()
	s := startServer(t, &Server{Lookup: vms.lookup, Upstreams: []string{}})
	if r := query(t, "udp", s.Addr(), "newbox.vm.", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("query(newbox.vm. A) before adding rcode = %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
	}
	vms.set("newbox", netip.MustParseAddr("172.30.0.9"))
	r := query(t, "udp", s.Addr(), "newbox.vm.", mdns.TypeA)
	if got, want := rdata(r.Answer), []string{"A 172.30.0.9"}; !slices.Equal(got, want) {
		t.Errorf("query(newbox.vm. A) after adding = %q, want %q", got, want)
	}
}

// fakeUpstream serves handler on a loopback UDP and TCP port and returns its address.
func fakeUpstream(t *testing.T, handler mdns.HandlerFunc) string {
	t.Helper()
	pc, l, err := listenPair("127.0.0.1:0")
	if err != nil {
		t.Fatalf("listenPair(127.0.0.1:0) = %v, want nil", err)
	}
	return serveFake(t, pc, l, handler)
}

// serveFake serves handler on pc and l until the test ends and returns the address.
func serveFake(t *testing.T, pc net.PacketConn, l net.Listener, handler mdns.HandlerFunc) string {
	t.Helper()
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: handler}, {Listener: l, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			srv.Shutdown()
			<-done
		})
	}
	return pc.LocalAddr().String()
}

// exampleUpstream answers example.com. A with 192.0.2.1 and counts queries.
func exampleUpstream(t *testing.T, count *atomic.Int32) string {
	return fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		if count != nil {
			count.Add(1)
		}
		m := new(mdns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		if req.Question[0].Name == "example.com." && req.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR("example.com. 60 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})
}

func TestForward(t *testing.T) {
	var count atomic.Int32
	up := exampleUpstream(t, &count)
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{up}})
	for _, network := range []string{"udp", "tcp"} {
		r := query(t, network, s.Addr(), "example.com.", mdns.TypeA)
		if got, want := rdata(r.Answer), []string{"A 192.0.2.1"}; !slices.Equal(got, want) {
			t.Errorf("query(example.com. A) over %s = %q, want %q", network, got, want)
		}
		if r.Authoritative || !r.RecursionAvailable {
			t.Errorf("query(example.com. A) over %s AA=%v RA=%v, want AA=false RA=true", network, r.Authoritative, r.RecursionAvailable)
		}
	}
	if r := query(t, "udp", s.Addr(), "nothing.example.", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Errorf("query(nothing.example. A) rcode = %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
	}
	// Zone names are never forwarded.
	before := count.Load()
	query(t, "udp", s.Addr(), "unknown.vm.", mdns.TypeA)
	query(t, "udp", s.Addr(), "testbox.vm.", mdns.TypeAAAA)
	if got := count.Load() - before; got != 0 {
		t.Errorf("upstream queries for vm. names = %d, want 0", got)
	}
	r := query(t, "udp", s.Addr(), "testbox.vm.", mdns.TypeA)
	if !r.RecursionAvailable {
		t.Errorf("query(testbox.vm. A) with upstream RA = false, want true")
	}
}

func TestForwardTruncatedRetriesTCP(t *testing.T) {
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncated = true
		} else {
			rr, _ := mdns.NewRR("big.example. 60 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	s := startServer(t, &Server{Upstreams: []string{up}})
	r := query(t, "udp", s.Addr(), "big.example.", mdns.TypeA)
	if got, want := rdata(r.Answer), []string{"A 192.0.2.7"}; !slices.Equal(got, want) || r.Truncated {
		t.Errorf("query(big.example. A) = %q TC=%v, want %q TC=false", got, r.Truncated, want)
	}
}

func TestForwardTruncatesForClient(t *testing.T) {
	// 60 A records do not fit the 512 bytes of a client without EDNS.
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		for i := range 60 {
			rr, _ := mdns.NewRR(fmt.Sprintf("many.example. 60 IN A 192.0.2.%d", i+1))
			m.Answer = append(m.Answer, rr)
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(512)
		}
		w.WriteMsg(m)
	})
	s := startServer(t, &Server{Upstreams: []string{up}})
	if r := query(t, "udp", s.Addr(), "many.example.", mdns.TypeA); !r.Truncated {
		t.Errorf("query(many.example. A) over udp TC = false, want true")
	}
	if r := query(t, "tcp", s.Addr(), "many.example.", mdns.TypeA); len(r.Answer) != 60 {
		t.Errorf("query(many.example. A) over tcp answers = %d, want 60", len(r.Answer))
	}
}

func TestForwardFallsBack(t *testing.T) {
	// A loopback port nobody listens on: the UDP exchange fails fast or times out.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	servfail := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeServerFailure)
		w.WriteMsg(m)
	})
	good := exampleUpstream(t, nil)
	s := startServer(t, &Server{Upstreams: []string{dead, servfail, good}})
	r := query(t, "udp", s.Addr(), "example.com.", mdns.TypeA)
	if got, want := rdata(r.Answer), []string{"A 192.0.2.1"}; !slices.Equal(got, want) {
		t.Errorf("query(example.com. A) with dead, servfail, good upstreams = %q, want %q", got, want)
	}
}

// TestForwardSkipsNonAnswers: an upstream message that is not a response
// to the question asked is never relayed (found by FuzzUpstreamAnswer); the
// next upstream is asked, and without one the client gets SERVFAIL.
func TestForwardSkipsNonAnswers(t *testing.T) {
	for name, edit := range map[string]func(m *mdns.Msg){
		"not a response": func(m *mdns.Msg) { m.Response = false },
		"other question": func(m *mdns.Msg) { m.Question[0].Name = "other.example." },
		"other type":     func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeMX },
		"no question":    func(m *mdns.Msg) { m.Question = nil },
		"two questions":  func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) },
		"same, recased":  nil,
	} {
		bad := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
			m := new(mdns.Msg)
			m.SetReply(req)
			m.Question[0].Name = "EXAMPLE.com."
			rr, _ := mdns.NewRR("example.com. 60 IN A 6.6.6.6")
			m.Answer = append(m.Answer, rr)
			if edit != nil {
				edit(m)
			}
			w.WriteMsg(m)
		})
		want := "A 6.6.6.6"
		if edit != nil {
			want = "A 192.0.2.1"
		}
		s := startServer(t, &Server{Upstreams: []string{bad, exampleUpstream(t, nil)}})
		if got := rdata(query(t, "udp", s.Addr(), "example.com.", mdns.TypeA).Answer); !slices.Equal(got, []string{want}) {
			t.Errorf("query(example.com. A) with an upstream answering %s first = %q, want %q", name, got, want)
		}
		if edit == nil {
			continue
		}
		s = startServer(t, &Server{Upstreams: []string{bad}})
		if r := query(t, "udp", s.Addr(), "example.com.", mdns.TypeA); r.Rcode != mdns.RcodeServerFailure || len(r.Answer) != 0 {
			t.Errorf("query(example.com. A) with only an upstream answering %s = %s %q, want SERVFAIL", name, mdns.RcodeToString[r.Rcode], rdata(r.Answer))
		}
	}
}

func TestNoUpstreamServfail(t *testing.T) {
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{}})
	r := query(t, "udp", s.Addr(), "example.com.", mdns.TypeA)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("query(example.com. A) without upstream rcode = %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	if r.RecursionAvailable {
		t.Errorf("query(example.com. A) without upstream RA = true, want false")
	}
}

func TestNoForwardLoop(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	self := pc.LocalAddr().String()
	pc.Close()
	s := startServer(t, &Server{Addrs: []string{self}, Upstreams: []string{self}})
	start := time.Now()
	r := query(t, "udp", s.Addr(), "example.com.", mdns.TypeA)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("query(example.com. A) with only ourselves upstream rcode = %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("query(example.com. A) with only ourselves upstream took %v, want an immediate answer", d)
	}
}

func TestIsSelf(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("192.168.1.5")}
	tests := []struct {
		bound []string
		up    string
		want  bool
	}{
		{[]string{"127.0.0.1:53"}, "127.0.0.1:53", true},
		{[]string{"127.0.0.1:53"}, "127.0.0.53:53", false},
		{[]string{"127.0.0.1:53"}, "127.0.0.1:5353", false},
		{[]string{"127.0.0.1:53", "172.30.0.1:53"}, "172.30.0.1:53", true},
		{[]string{"0.0.0.0:53"}, "127.0.0.53:53", true},
		{[]string{"0.0.0.0:53"}, "192.168.1.5:53", true},
		{[]string{"0.0.0.0:53"}, "192.168.1.1:53", false},
		{[]string{"127.0.0.1:53"}, "0.0.0.0:53", true},
		{[]string{"[::1]:53"}, "[::1]:53", true},
		{[]string{"[::]:53"}, "[::1]:53", true},
	}
	for _, tt := range tests {
		f := newForwarder([]string{}, tt.bound, time.Second, quietLog())
		if got := f.isSelf(netip.MustParseAddrPort(tt.up), local); got != tt.want {
			t.Errorf("isSelf(%s) with listeners %v = %v, want %v", tt.up, tt.bound, got, tt.want)
		}
	}
}

func TestStartAddressInUse(t *testing.T) {
	first := startServer(t, &Server{Upstreams: []string{}})
	addr := first.Addr()
	s := &Server{Addrs: []string{"127.0.0.1:0", addr}, Upstreams: []string{}, Log: quietLog()}
	err := s.Start()
	if err == nil {
		s.Close()
		t.Fatalf("Start() on busy %s = nil, want an error", addr)
	}
	want := "listening on udp " + addr + ": bind: address already in use: set dns_listen in the config to another address"
	if err.Error() != want || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Start() on busy %s = %q, want %q wrapping EADDRINUSE", addr, err, want)
	}
	// The first, successful listener must have been closed again.
	if bound := s.BoundAddrs(); len(bound) != 0 {
		t.Errorf("BoundAddrs() after failed Start = %v, want none", bound)
	}
}

func TestBoundAddrs(t *testing.T) {
	s := startServer(t, &Server{Addrs: []string{"127.0.0.1:0", "127.0.0.2:0"}, Upstreams: []string{}})
	bound := s.BoundAddrs()
	if len(bound) != 2 || !strings.HasPrefix(bound[0], "127.0.0.1:") || !strings.HasPrefix(bound[1], "127.0.0.2:") || s.Addr() != bound[0] {
		t.Fatalf("BoundAddrs() = %v, Addr() = %s, want 127.0.0.1:N and 127.0.0.2:M", bound, s.Addr())
	}
	for _, b := range bound {
		for _, network := range []string{"udp", "tcp"} {
			if r := query(t, network, b, "ns.vm.", mdns.TypeA); len(r.Answer) != 1 {
				t.Errorf("query(ns.vm. A) to %s over %s answers = %d, want 1", b, network, len(r.Answer))
			}
		}
	}
}

// TestBridgeAddress listens on an address of a dummy interface inside a
// namespace, like bangerd on its bridge, and queries it from there.
func TestBridgeAddress(t *testing.T) {
	vmtest.Require(t, "DNS on a bridge address", vmtest.Root())
	ns := vmtest.NewNS(t)
	// A dummy link where the module exists, else a bridge like bangerd's.
	if out, err := vmtest.Command("ip", "-n", ns.Name, "link", "add", "d0", "type", "dummy").CombinedOutput(); err != nil {
		if out2, err2 := vmtest.Command("ip", "-n", ns.Name, "link", "add", "d0", "type", "bridge").CombinedOutput(); err2 != nil {
			t.Fatalf("adding link d0: dummy: %v: %s; bridge: %v: %s", err, out, err2, out2)
		}
	}
	for _, args := range [][]string{
		{"-n", ns.Name, "addr", "add", "10.99.0.1/24", "dev", "d0"},
		{"-n", ns.Name, "link", "set", "d0", "up"},
	} {
		if out, err := vmtest.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	s := &Server{Addrs: []string{"10.99.0.1:53"}, Lookup: testVMs().lookup, Upstreams: []string{}, Log: quietLog()}
	if err := ns.Do(s.Start); err != nil {
		t.Fatalf("Start() in namespace = %v, want nil", err)
	}
	defer s.Close()
	if got, want := s.Addr(), "10.99.0.1:53"; got != want {
		t.Errorf("Addr() = %s, want %s", got, want)
	}
	for _, network := range []string{"udp", "tcp"} {
		var r *mdns.Msg
		err := ns.Do(func() error {
			m := new(mdns.Msg)
			m.SetQuestion("testbox.vm.", mdns.TypeA)
			var err error
			r, _, err = (&mdns.Client{Net: network, Timeout: 3 * time.Second}).Exchange(m, "10.99.0.1:53")
			return err
		})
		if err != nil {
			t.Fatalf("query(testbox.vm. A) over %s in namespace: %v", network, err)
		}
		if got, want := rdata(r.Answer), []string{"A 172.30.0.2"}; !slices.Equal(got, want) {
			t.Errorf("query(testbox.vm. A) over %s in namespace = %q, want %q", network, got, want)
		}
	}
	// ns.vm. resolves to the bridge address, the first listen address.
	err := ns.Do(func() error {
		m := new(mdns.Msg)
		m.SetQuestion("ns.vm.", mdns.TypeA)
		r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(m, "10.99.0.1:53")
		if err != nil {
			return err
		}
		if got, want := rdata(r.Answer), []string{"A 10.99.0.1"}; !slices.Equal(got, want) {
			return fmt.Errorf("query(ns.vm. A) = %q, want %q", got, want)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
