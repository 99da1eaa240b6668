package dns

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fuzzWriter is the client side of one query: it records what the server
// writes back.
type fuzzWriter struct {
	remote net.Addr
	msgs   []*mdns.Msg
}

func (w *fuzzWriter) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *fuzzWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fuzzWriter) WriteMsg(m *mdns.Msg) error {
	w.msgs = append(w.msgs, m.Copy())
	return nil
}
func (w *fuzzWriter) Write([]byte) (int, error) {
	return 0, errors.New("fuzzWriter takes messages only")
}
func (w *fuzzWriter) Close() error        { return nil }
func (w *fuzzWriter) TsigStatus() error   { return nil }
func (w *fuzzWriter) TsigTimersOnly(bool) {}
func (w *fuzzWriter) Hijack()             {}

// rawUpstream is an upstream resolver on loopback that answers every query
// over UDP and TCP with whatever answer returns for the query's bytes.
type rawUpstream struct {
	addr    string
	queries atomic.Int64
	mu      sync.Mutex
	answer  func(query []byte) []byte
}

func (u *rawUpstream) reply(q []byte) []byte {
	u.queries.Add(1)
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.answer(q)
}

func startRawUpstream(tb testing.TB) *rawUpstream {
	pc, l, err := listenPair("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &rawUpstream{addr: pc.LocalAddr().String(), answer: func([]byte) []byte { return nil }}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if a := u.reply(buf[:n]); a != nil {
				pc.WriteTo(a, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			var n uint16
			q := []byte(nil)
			if binary.Read(c, binary.BigEndian, &n) == nil {
				q = make([]byte, n)
				if _, err := io.ReadFull(c, q); err != nil {
					q = nil
				}
			}
			if a := u.reply(q); q != nil && a != nil {
				c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(a))))
				c.Write(a)
			}
			c.Close()
		}
	}()
	tb.Cleanup(func() {
		pc.Close()
		l.Close()
		wg.Wait()
	})
	return u
}

// fuzzServer starts a server on loopback for the fuzz targets, forwarding
// to up, with a few VMs.
func fuzzServer(tb testing.TB, up string, lookups *[]string) *Server {
	vms := map[string]netip.Addr{
		"box":    netip.MustParseAddr("172.30.0.5"),
		"v6box":  netip.MustParseAddr("fd00::5"),
		"mapped": netip.MustParseAddr("::ffff:172.30.0.9"),
	}
	var mu sync.Mutex
	s := &Server{
		Addrs:     []string{"127.0.0.1:0"},
		Upstreams: []string{up},
		Timeout:   300 * time.Millisecond,
		Log:       quietLog(),
		Lookup: func(name string) (netip.Addr, bool) {
			mu.Lock()
			*lookups = append(*lookups, name)
			mu.Unlock()
			a, ok := vms[name]
			return a, ok
		},
	}
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// clientSize is the largest UDP answer the client of req takes.
func clientSize(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), mdns.MinMsgSize)
	}
	return mdns.MinMsgSize
}

// checkReply checks what every answer must be: exactly one message, for
// the client's query id, that packs and, over UDP, fits the client.
func checkReply(t *testing.T, req *mdns.Msg, w *fuzzWriter, tcp bool) *mdns.Msg {
	t.Helper()
	if len(w.msgs) != 1 {
		t.Fatalf("query %v: the server wrote %d answers, want 1", req.Question, len(w.msgs))
	}
	resp := w.msgs[0]
	if resp.Id != req.Id {
		t.Fatalf("query %v: answer id %d, want the query's %d", req.Question, resp.Id, req.Id)
	}
	b, err := resp.Pack()
	if err != nil {
		t.Fatalf("query %v: the answer does not pack: %v\n%v", req.Question, err, resp)
	}
	if !tcp && len(b) > clientSize(req) {
		t.Fatalf("query %v over udp: the answer is %d bytes, more than the client's %d\n%v", req.Question, len(b), clientSize(req), resp)
	}
	return resp
}

// FuzzQuery: whatever query packet a client sends, the server answers it
// once, for its id, in a size the client takes; names in the zone are
// answered by the server alone (never upstream), authoritatively, with only
// the zone's records: the VM's own address under the name asked, the apex's
// SOA and NS, ns.vm.'s address, and NXDOMAIN for names it does not know.
func FuzzQuery(f *testing.F) {
	up := startRawUpstream(f)
	up.answer = func(q []byte) []byte {
		req := new(mdns.Msg)
		if req.Unpack(q) != nil || len(req.Question) != 1 {
			return nil
		}
		m := new(mdns.Msg)
		m.SetReply(req)
		rr, _ := mdns.NewRR("example.com. 60 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		b, _ := m.Pack()
		return b
	}
	var lookups []string
	s := fuzzServer(f, up.addr, &lookups)
	nsAddr := netip.MustParseAddrPort(s.Addr()).Addr()
	for _, q := range []struct {
		name  string
		qtype uint16
		class uint16
		edns  bool
	}{
		{"box.vm.", mdns.TypeA, mdns.ClassINET, false}, {"BOX.Vm.", mdns.TypeANY, mdns.ClassINET, true},
		{"v6box.vm.", mdns.TypeAAAA, mdns.ClassINET, false}, {"mapped.vm.", mdns.TypeA, mdns.ClassANY, false},
		{"vm.", mdns.TypeSOA, mdns.ClassINET, false}, {"vm.", mdns.TypeANY, mdns.ClassINET, true},
		{"vm.", mdns.TypeNS, mdns.ClassINET, false}, {"ns.vm.", mdns.TypeA, mdns.ClassINET, false},
		{"nobody.vm.", mdns.TypeA, mdns.ClassINET, false}, {"a.box.vm.", mdns.TypeA, mdns.ClassINET, false},
		{"box.vm.", mdns.TypeMX, mdns.ClassINET, false}, {"box.vm.", mdns.TypeA, mdns.ClassCHAOS, false},
		{"vm.", mdns.TypeAXFR, mdns.ClassINET, false}, {"example.com.", mdns.TypeA, mdns.ClassINET, false},
		{"box\\.x.vm.", mdns.TypeA, mdns.ClassINET, false}, {"b\\032x.vm.", mdns.TypeA, mdns.ClassINET, false},
	} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.Question[0].Qclass = q.class
		if q.edns {
			m.SetEdns0(4096, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
	}
	two := new(mdns.Msg)
	two.Question = []mdns.Question{{Name: "box.vm.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}, {Name: "vm.", Qtype: mdns.TypeSOA, Qclass: mdns.ClassINET}}
	if b, err := two.Pack(); err == nil {
		f.Add(b, true)
	}
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, packet []byte, tcp bool) {
		req := new(mdns.Msg)
		if req.Unpack(packet) != nil {
			return // the library drops or refuses it before any handler
		}
		w := &fuzzWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
		if tcp {
			w.remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
		}
		lookups = lookups[:0]
		before := up.queries.Load()
		s.serveDNS(w, req)
		resp := checkReply(t, req, w, tcp)
		for _, l := range lookups {
			if l == "" || l != strings.ToLower(l) || strings.Contains(l, ".") {
				t.Fatalf("query %v: Lookup(%q), want one lower-case label", req.Question, l)
			}
		}
		if len(req.Question) != 1 {
			if resp.Rcode != mdns.RcodeFormatError || len(resp.Answer) != 0 {
				t.Fatalf("query with %d questions: answer %v, want FORMERR", len(req.Question), resp)
			}
			return
		}
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		if !mdns.IsSubDomain(s.Zone, name) {
			return
		}
		if up.queries.Load() != before {
			t.Fatalf("query %v: a name in the zone went upstream", q)
		}
		refused := q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY || q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR
		if !resp.Response || !resp.Authoritative && !refused {
			t.Fatalf("query %v: answer %v is not an authoritative response", q, resp)
		}
		if refused {
			if resp.Rcode != mdns.RcodeRefused || len(resp.Answer) != 0 {
				t.Fatalf("query %v: answer %v, want REFUSED", q, resp)
			}
			return
		}
		label := strings.TrimSuffix(name, "."+s.Zone)
		known := map[string]netip.Addr{"box": netip.MustParseAddr("172.30.0.5"), "v6box": netip.MustParseAddr("fd00::5"), "mapped": netip.MustParseAddr("172.30.0.9")}
		addr, isVM := known[label]
		switch {
		case name == s.Zone, name == s.nsName():
			if resp.Rcode != mdns.RcodeSuccess {
				t.Fatalf("query %v: rcode %s, want NOERROR", q, mdns.RcodeToString[resp.Rcode])
			}
		case isVM:
			if resp.Rcode != mdns.RcodeSuccess {
				t.Fatalf("query %v: rcode %s, want NOERROR", q, mdns.RcodeToString[resp.Rcode])
			}
		default:
			if resp.Rcode != mdns.RcodeNameError || len(resp.Answer) != 0 {
				t.Fatalf("query %v: answer %v, want NXDOMAIN", q, resp)
			}
		}
		for _, rr := range resp.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, q.Name) || h.Class != mdns.ClassINET || h.Ttl != s.TTL {
				t.Fatalf("query %v: answer record %v, want one for %s IN with TTL %d", q, rr, q.Name, s.TTL)
			}
			var got netip.Addr
			switch rr := rr.(type) {
			case *mdns.A:
				got, _ = netip.AddrFromSlice(rr.A.To4())
			case *mdns.AAAA:
				got, _ = netip.AddrFromSlice(rr.AAAA)
			case *mdns.SOA, *mdns.NS:
				if name != s.Zone {
					t.Fatalf("query %v: answer record %v outside the apex", q, rr)
				}
				continue
			default:
				t.Fatalf("query %v: answer record %v of a type the zone does not have", q, rr)
			}
			want := addr
			if name == s.nsName() {
				want = nsAddr
			}
			if got != want {
				t.Fatalf("query %v: answer %v, want the address %v", q, rr, want)
			}
		}
		for _, rr := range resp.Ns {
			if _, ok := rr.(*mdns.SOA); !ok || rr.Header().Name != s.Zone {
				t.Fatalf("query %v: authority record %v, want only the zone's SOA", q, rr)
			}
		}
		for _, rr := range resp.Extra {
			switch rr.(type) {
			case *mdns.OPT:
			case *mdns.A, *mdns.AAAA:
				if rr.Header().Name != s.nsName() {
					t.Fatalf("query %v: additional record %v, want only ns.%s glue", q, rr, s.Zone)
				}
			default:
				t.Fatalf("query %v: additional record %v, want only glue and OPT", q, rr)
			}
		}
	})
}

// FuzzUpstreamAnswer: whatever an upstream resolver answers a forwarded
// query with (over UDP, and over TCP after a truncated UDP answer), the
// client gets exactly one answer, for its id, in a size it takes: the
// upstream's answer or SERVFAIL.
func FuzzUpstreamAnswer(f *testing.F) {
	up := startRawUpstream(f)
	var answer []byte
	up.answer = func(q []byte) []byte {
		if len(q) < 2 || len(answer) < 2 {
			return answer
		}
		a := append([]byte(nil), answer...)
		copy(a, q[:2]) // the query's id
		return a
	}
	var lookups []string
	s := fuzzServer(f, up.addr, &lookups)

	query := func(edns uint16) *mdns.Msg {
		m := new(mdns.Msg)
		m.SetQuestion("example.com.", mdns.TypeA)
		if edns > 0 {
			m.SetEdns0(edns, false)
		}
		return m
	}
	for _, build := range []func(*mdns.Msg) *mdns.Msg{
		func(q *mdns.Msg) *mdns.Msg {
			m := new(mdns.Msg)
			m.SetReply(q)
			rr, _ := mdns.NewRR("example.com. 60 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
			return m
		},
		func(q *mdns.Msg) *mdns.Msg {
			m := new(mdns.Msg)
			m.SetReply(q)
			for range 60 {
				rr, _ := mdns.NewRR("example.com. 60 IN TXT \"" + strings.Repeat("t", 200) + "\"")
				m.Answer = append(m.Answer, rr)
			}
			return m
		},
		func(q *mdns.Msg) *mdns.Msg {
			m := new(mdns.Msg)
			m.SetReply(q)
			m.Truncated = true
			return m
		},
		func(q *mdns.Msg) *mdns.Msg {
			m := new(mdns.Msg)
			m.SetRcode(q, mdns.RcodeServerFailure)
			return m
		},
		func(q *mdns.Msg) *mdns.Msg {
			m := new(mdns.Msg)
			m.SetReply(q)
			rr, _ := mdns.NewRR("box.vm. 60 IN A 6.6.6.6")
			m.Extra = append(m.Extra, rr)
			return m
		},
	} {
		b, err := build(query(0)).Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(0), false)
		f.Add(b, uint16(1232), false)
		f.Add(b, uint16(0), true)
	}
	f.Add([]byte{0, 0, 0x80}, uint16(0), false)
	f.Fuzz(func(t *testing.T, reply []byte, edns uint16, tcp bool) {
		up.mu.Lock()
		answer = reply
		up.mu.Unlock()
		req := query(edns)
		req.Id = mdns.Id()
		w := &fuzzWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
		if tcp {
			w.remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
		}
		s.serveDNS(w, req)
		resp := checkReply(t, req, w, tcp)
		if !resp.Response {
			t.Fatalf("forwarded query: answer %v is not a response", resp)
		}
		if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, "example.com.") || resp.Question[0].Qtype != mdns.TypeA {
			t.Fatalf("forwarded query: answer %v is not for the question asked", resp)
		}
	})
}
