package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
)

// fakeFilter decides by name and records what it was asked and shown.
type fakeFilter struct {
	decide  map[string]Decision
	verdict Verdict
	err     error

	mu      sync.Mutex
	queries []string // "client name"
	answers []Answer
}

func (f *fakeFilter) Query(client netip.Addr, name string) Decision {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, client.String()+" "+name)
	return f.decide[name]
}

func (f *fakeFilter) Answer(client netip.Addr, name string, a Answer) (Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers = append(f.answers, a)
	return f.verdict, f.err
}

func (f *fakeFilter) seen() ([]string, []Answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries), slices.Clone(f.answers)
}

// chainUpstream knows a few names with CNAMEs, stray and many records.
func chainUpstream(t *testing.T) string {
	return fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		rr := func(s string) { r, _ := mdns.NewRR(s); m.Answer = append(m.Answer, r) }
		q := req.Question[0]
		switch {
		case q.Qtype == mdns.TypeA && q.Name == "plain.example.":
			rr("plain.example. 300 IN A 192.0.2.1")
			rr("plain.example. 100 IN A 192.0.2.2")
			rr("stray.example. 300 IN A 203.0.113.9") // not on the chain
			extra, _ := mdns.NewRR("ns.example. 300 IN A 203.0.113.8")
			m.Extra = append(m.Extra, extra)
		case q.Qtype == mdns.TypeA && q.Name == "www.example.":
			rr("www.example. 600 IN CNAME Edge.CDN.example.")
			rr("edge.cdn.example. 60 IN A 198.51.100.4")
		case q.Qtype == mdns.TypeA && q.Name == "many.example.":
			for i := range 40 {
				rr(fmt.Sprintf("many.example. 300 IN A 192.0.2.%d", i+1))
			}
		case q.Qtype == mdns.TypeA && q.Name == "loop.example.":
			rr("loop.example. 60 IN CNAME loop2.example.")
			rr("loop2.example. 60 IN CNAME loop.example.")
		case q.Qtype == mdns.TypeAAAA && q.Name == "plain.example.":
			rr("plain.example. 300 IN AAAA 2001:db8::1")
		default:
			m.Rcode = mdns.RcodeNameError
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(512)
		}
		w.WriteMsg(m)
	})
}

func TestFilter(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name     string
		qtype    uint16
		decision Decision
		verdict  Verdict
		err      error
		edns     bool
		rcode    int
		answer   []string // rdata the client gets
		ttls     []uint32
		shown    []Answer // what the filter saw
	}{
		{name: "plain.example.", decision: Forward, rcode: mdns.RcodeSuccess,
			answer: []string{"A 192.0.2.1", "A 192.0.2.2", "A 203.0.113.9"}, ttls: []uint32{300, 100, 300}},
		{name: "plain.example.", decision: Refuse, rcode: mdns.RcodeNameError},
		{name: "plain.example.", decision: Refuse, edns: true, rcode: mdns.RcodeNameError},
		{name: "plain.example.", decision: Check, rcode: mdns.RcodeSuccess,
			answer: []string{"A 192.0.2.1", "A 192.0.2.2"}, ttls: []uint32{300, 100},
			shown: []Answer{{Names: []string{"plain.example."}, Addrs: []netip.Addr{a("192.0.2.1"), a("192.0.2.2")}, TTL: 100}}},
		{name: "plain.example.", decision: Check, verdict: Verdict{MaxTTL: 200}, rcode: mdns.RcodeSuccess,
			answer: []string{"A 192.0.2.1", "A 192.0.2.2"}, ttls: []uint32{200, 100},
			shown: []Answer{{Names: []string{"plain.example."}, Addrs: []netip.Addr{a("192.0.2.1"), a("192.0.2.2")}, TTL: 100}}},
		{name: "plain.example.", decision: Check, verdict: Verdict{Refuse: true}, rcode: mdns.RcodeNameError,
			shown: []Answer{{Names: []string{"plain.example."}, Addrs: []netip.Addr{a("192.0.2.1"), a("192.0.2.2")}, TTL: 100}}},
		{name: "plain.example.", decision: Check, err: errors.New("nft failed"), rcode: mdns.RcodeServerFailure,
			shown: []Answer{{Names: []string{"plain.example."}, Addrs: []netip.Addr{a("192.0.2.1"), a("192.0.2.2")}, TTL: 100}}},
		{name: "plain.example.", qtype: mdns.TypeAAAA, decision: Check, rcode: mdns.RcodeSuccess,
			answer: []string{"AAAA 2001:db8::1"}, ttls: []uint32{300}},
		{name: "www.example.", decision: Check, rcode: mdns.RcodeSuccess,
			answer: []string{"CNAME Edge.CDN.example.", "A 198.51.100.4"}, ttls: []uint32{600, 60},
			shown: []Answer{{Names: []string{"www.example.", "edge.cdn.example."}, Addrs: []netip.Addr{a("198.51.100.4")}, TTL: 60}}},
		{name: "loop.example.", decision: Check, rcode: mdns.RcodeSuccess,
			answer: []string{"CNAME loop2.example.", "CNAME loop.example."}, ttls: []uint32{60, 60},
			shown: []Answer{{Names: []string{"loop.example.", "loop2.example."}, TTL: 60}}},
		{name: "www.example.", decision: RefuseLearn, rcode: mdns.RcodeNameError,
			shown: []Answer{{Names: []string{"www.example.", "edge.cdn.example."}, Addrs: []netip.Addr{a("198.51.100.4")}, TTL: 60}}},
		{name: "www.example.", qtype: mdns.TypeTXT, decision: RefuseLearn, rcode: mdns.RcodeNameError,
			shown: []Answer{{Names: []string{"www.example.", "edge.cdn.example."}, Addrs: []netip.Addr{a("198.51.100.4")}, TTL: 60}}},
		{name: "gone.example.", decision: Check, rcode: mdns.RcodeNameError},
		{name: "gone.example.", decision: RefuseLearn, rcode: mdns.RcodeNameError},
		{name: "plain.example.", decision: Decision(99), rcode: mdns.RcodeNameError},
	}
	up := chainUpstream(t)
	for _, tt := range tests {
		qtype := tt.qtype
		if qtype == 0 {
			qtype = mdns.TypeA
		}
		desc := fmt.Sprintf("%s %s decision %d verdict %+v err %v edns %v", tt.name, mdns.TypeToString[qtype], tt.decision, tt.verdict, tt.err, tt.edns)
		f := &fakeFilter{decide: map[string]Decision{tt.name: tt.decision}, verdict: tt.verdict, err: tt.err}
		s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{up}, Filter: f})
		m := new(mdns.Msg)
		m.SetQuestion(tt.name, qtype)
		if tt.edns {
			m.SetEdns0(1232, false)
		}
		r, _, err := (&mdns.Client{Timeout: 3e9}).Exchange(m, s.Addr())
		if err != nil {
			t.Fatalf("%s: %v", desc, err)
		}
		var ttls []uint32
		for _, rr := range r.Answer {
			ttls = append(ttls, rr.Header().Ttl)
		}
		if r.Rcode != tt.rcode || !slices.Equal(rdata(r.Answer), tt.answer) || !slices.Equal(ttls, tt.ttls) {
			t.Errorf("%s: answer = %s %q ttls %v, want %s %q ttls %v", desc, mdns.RcodeToString[r.Rcode], rdata(r.Answer), ttls,
				mdns.RcodeToString[tt.rcode], tt.answer, tt.ttls)
		}
		if tt.decision == Check && tt.rcode == mdns.RcodeSuccess {
			for _, rr := range r.Extra {
				if _, ok := rr.(*mdns.A); ok {
					t.Errorf("%s: additional section has %s, want no A records", desc, rr)
				}
			}
		}
		if tt.edns {
			opt := r.IsEdns0()
			var ede *mdns.EDNS0_EDE
			if opt != nil {
				for _, o := range opt.Option {
					if e, ok := o.(*mdns.EDNS0_EDE); ok {
						ede = e
					}
				}
			}
			if ede == nil || ede.InfoCode != mdns.ExtendedErrorCodeBlocked {
				t.Errorf("%s: EDNS options = %v, want extended error 15 (Blocked)", desc, opt)
			}
		}
		queries, shown := f.seen()
		if want := []string{"127.0.0.1 " + tt.name}; !slices.Equal(queries, want) {
			t.Errorf("%s: filter queries = %q, want %q", desc, queries, want)
		}
		if fmt.Sprint(shown) != fmt.Sprint(tt.shown) {
			t.Errorf("%s: filter answers = %v, want %v", desc, shown, tt.shown)
		}
	}
}

// TestFilterBounds: at most MaxAnswerAddrs addresses reach the filter and
// the client, so the client never sees one the filter did not.
func TestFilterBounds(t *testing.T) {
	f := &fakeFilter{decide: map[string]Decision{"many.example.": Check}}
	s := startServer(t, &Server{Upstreams: []string{chainUpstream(t)}, Filter: f})
	r := query(t, "tcp", s.Addr(), "many.example.", mdns.TypeA)
	_, shown := f.seen()
	if len(shown) != 1 || len(shown[0].Addrs) != MaxAnswerAddrs || len(r.Answer) != MaxAnswerAddrs {
		t.Fatalf("many.example. (40 A records): filter saw %v, client got %d records; want %d each", shown, len(r.Answer), MaxAnswerAddrs)
	}
	for i, rr := range r.Answer {
		if got := rr.(*mdns.A).A.String(); got != shown[0].Addrs[i].String() {
			t.Errorf("client record %d = %s, want %s", i, got, shown[0].Addrs[i])
		}
	}
}

// TestFilterSkipsZone: names in the zone are answered without the filter.
func TestFilterSkipsZone(t *testing.T) {
	f := &fakeFilter{decide: map[string]Decision{}}
	s := startServer(t, &Server{Lookup: testVMs().lookup, Upstreams: []string{}, Filter: f})
	if r := query(t, "udp", s.Addr(), "testbox.vm.", mdns.TypeA); !slices.Equal(rdata(r.Answer), []string{"A 172.30.0.2"}) {
		t.Errorf("query(testbox.vm. A) with a filter = %q, want A 172.30.0.2", rdata(r.Answer))
	}
	if q, _ := f.seen(); len(q) != 0 {
		t.Errorf("filter saw %q for a zone name, want nothing", q)
	}
}

func TestResolve(t *testing.T) {
	s := &Server{}
	if _, _, err := s.Resolve(context.Background(), "www.example"); err == nil {
		t.Errorf("Resolve() before Start = nil error, want one")
	}
	s = startServer(t, &Server{Upstreams: []string{chainUpstream(t)}})
	addrs, ttl, err := s.Resolve(context.Background(), "WWW.example")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("198.51.100.4")}) || ttl != 60 {
		t.Errorf("Resolve(WWW.example) = %v, %d, %v; want [198.51.100.4], 60, nil", addrs, ttl, err)
	}
	if addrs, _, err := s.Resolve(context.Background(), "gone.example"); err == nil {
		t.Errorf("Resolve(gone.example) = %v, nil; want an error", addrs)
	}
	if _, _, err := s.Resolve(context.Background(), "bad..name"); err == nil {
		t.Errorf("Resolve(bad..name) = nil error, want one")
	}
}
