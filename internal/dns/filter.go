package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

// Filter restricts, per client, the names outside the zone that the server
// resolves, and sees the addresses of the answers it lets through before the
// client does. bangerd's egress policy implements it: the query's source
// address tells which VM asks. With no Filter (the default) every query is
// forwarded as is.
type Filter interface {
	// Query decides about a question for name (lower case, fully
	// qualified) from client, before anything is forwarded.
	Query(client netip.Addr, name string) Decision
	// Answer runs once upstream answered a question that Query gave Check
	// or RefuseLearn, before the client gets anything. For Check, the
	// verdict says whether the client gets NXDOMAIN instead and caps the
	// TTLs it sees, and an error answers SERVFAIL. For RefuseLearn the
	// client gets NXDOMAIN whatever Answer returns.
	Answer(client netip.Addr, name string, a Answer) (Verdict, error)
}

// Decision is what a Filter wants done with one question.
type Decision uint8

const (
	// Forward forwards the question as if there were no Filter.
	Forward Decision = iota
	// Check forwards the question and passes the answer to Filter.Answer
	// before it is sent.
	Check
	// Refuse answers NXDOMAIN without asking upstream.
	Refuse
	// RefuseLearn asks upstream for the name's A records, passes them to
	// Filter.Answer and answers NXDOMAIN.
	RefuseLearn
)

// Bounds on what the server takes from an upstream answer for a Filter.
const (
	// MaxChain is the most names of a CNAME chain (the question's name
	// included) that the server follows.
	MaxChain = 8
	// MaxAnswerAddrs is the most IPv4 addresses passed to Filter.Answer;
	// A records beyond them are removed from the client's answer, so a
	// client never sees an address the Filter did not.
	MaxAnswerAddrs = 32
)

// Answer is what a Filter sees of an upstream answer.
type Answer struct {
	// Names is the question's name, then the CNAME targets it leads to, in
	// order (lower case, fully qualified, at most MaxChain).
	Names []string
	// Addrs are the distinct IPv4 addresses of the A records on Names (at
	// most MaxAnswerAddrs).
	Addrs []netip.Addr
	// TTL is the smallest TTL of those CNAME and A records.
	TTL uint32
}

// Verdict is a Filter's ruling on a checked answer.
type Verdict struct {
	// Refuse answers NXDOMAIN instead of the upstream answer.
	Refuse bool
	// MaxTTL caps the TTL of every record the client sees; 0 is no cap.
	MaxTTL uint32
}

// clientAddr is the query's source address, or the zero Addr.
func clientAddr(w mdns.ResponseWriter) netip.Addr {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// filtered answers a question outside the zone for a client of a Filter.
func (s *Server) filtered(req *mdns.Msg, tcp bool, client netip.Addr, name string) *mdns.Msg {
	switch d := s.Filter.Query(client, name); d {
	case Forward:
		return s.forward(req, tcp)
	case Check:
		resp, err := s.fwd.exchange(req)
		if err != nil {
			return s.forwardFailed(req, err)
		}
		if resp.Rcode == mdns.RcodeSuccess {
			a := keepChain(name, resp)
			if len(a.Addrs) > 0 || len(a.Names) > 1 {
				v, err := s.Filter.Answer(client, name, a)
				if err != nil {
					s.Log.Warn("dns answer not allowed through", "client", client, "name", name, "err", err)
					return s.servfail(req)
				}
				if v.Refuse {
					return s.refused(req)
				}
				capTTL(resp, v.MaxTTL)
			}
		}
		return s.relay(req, resp, tcp)
	case RefuseLearn:
		q := new(mdns.Msg)
		q.SetQuestion(name, mdns.TypeA)
		if resp, err := s.fwd.exchange(q); err == nil && resp.Rcode == mdns.RcodeSuccess {
			if a := keepChain(name, resp); len(a.Addrs) > 0 {
				if _, err := s.Filter.Answer(client, name, a); err != nil {
					s.Log.Warn("dns filter could not learn a refused name's addresses", "client", client, "name", name, "err", err)
				}
			}
		}
		return s.refused(req)
	default: // Refuse, and anything unknown.
		return s.refused(req)
	}
}

// keepChain follows resp's CNAME chain from name, removes every A record
// that is not on the chain or beyond MaxAnswerAddrs (and those of the
// additional section), and returns what remains for the Filter.
func keepChain(name string, resp *mdns.Msg) Answer {
	a := Answer{Names: []string{name}}
	on := map[string]bool{name: true}
	ttl := ^uint32(0)
	for cur := name; len(a.Names) < MaxChain; {
		next := ""
		for _, rr := range resp.Answer {
			if c, ok := rr.(*mdns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
				next = strings.ToLower(mdns.Fqdn(c.Target))
				ttl = min(ttl, c.Hdr.Ttl)
				break
			}
		}
		if next == "" || on[next] {
			break
		}
		on[next] = true
		a.Names = append(a.Names, next)
		cur = next
	}
	seen := map[netip.Addr]bool{}
	kept := resp.Answer[:0]
	for _, rr := range resp.Answer {
		r, ok := rr.(*mdns.A)
		if !ok {
			kept = append(kept, rr)
			continue
		}
		addr, ok := netip.AddrFromSlice(r.A)
		if !ok || !on[strings.ToLower(r.Hdr.Name)] {
			continue
		}
		addr = addr.Unmap()
		if !seen[addr] {
			if len(a.Addrs) == MaxAnswerAddrs {
				continue
			}
			seen[addr] = true
			a.Addrs = append(a.Addrs, addr)
		}
		ttl = min(ttl, r.Hdr.Ttl)
		kept = append(kept, rr)
	}
	resp.Answer = kept
	extra := resp.Extra[:0]
	for _, rr := range resp.Extra {
		if _, ok := rr.(*mdns.A); !ok {
			extra = append(extra, rr)
		}
	}
	resp.Extra = extra
	if ttl == ^uint32(0) {
		ttl = 0
	}
	a.TTL = ttl
	return a
}

// capTTL lowers every record's TTL to at most max (0: no cap).
func capTTL(m *mdns.Msg, max uint32) {
	if max == 0 {
		return
	}
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != mdns.TypeOPT && h.Ttl > max {
				h.Ttl = max
			}
		}
	}
}

// refused is the NXDOMAIN a Filter asked for, with an extended DNS error
// (15, Blocked) for clients that speak EDNS, so dig shows why.
func (s *Server) refused(req *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(req, mdns.RcodeNameError)
	m.RecursionAvailable = s.fwd.enabled()
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &mdns.EDNS0_EDE{InfoCode: mdns.ExtendedErrorCodeBlocked, ExtraText: "banger egress policy"})
	}
	return m
}

func (s *Server) servfail(req *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(req, mdns.RcodeServerFailure)
	m.RecursionAvailable = s.fwd.enabled()
	return m
}

// Resolve asks the upstream resolvers for name's A records, as the host
// would, and returns the addresses (at most MaxAnswerAddrs, following CNAMEs)
// and their smallest TTL. A name that does not exist is an error. bangerd's
// egress policy uses it to learn where denied names point before any guest
// asks.
func (s *Server) Resolve(ctx context.Context, name string) ([]netip.Addr, uint32, error) {
	s.mu.Lock()
	fwd := s.fwd
	s.mu.Unlock()
	if fwd == nil {
		return nil, 0, fmt.Errorf("resolving %s: dns server not started", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("resolving %s: %w", name, err)
	}
	name = strings.ToLower(mdns.Fqdn(name))
	if _, ok := mdns.IsDomainName(name); !ok {
		return nil, 0, fmt.Errorf("resolving %q: not a domain name", name)
	}
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	resp, err := fwd.exchange(q)
	if err != nil {
		return nil, 0, fmt.Errorf("resolving %s: %w", name, err)
	}
	if resp.Rcode != mdns.RcodeSuccess {
		return nil, 0, fmt.Errorf("resolving %s: %w: %s", name, errNoSuchName, mdns.RcodeToString[resp.Rcode])
	}
	a := keepChain(name, resp)
	return a.Addrs, a.TTL, nil
}

// errNoSuchName is Resolve's error for an answer without addresses.
var errNoSuchName = errors.New("upstream has no address")
