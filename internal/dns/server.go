// Package dns is bangerd's DNS server, answering the .vm zone from the daemon's VMs and forwarding every other name to the host's resolvers.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// Defaults for the Server fields left zero.
const (
	DefaultZone    = "vm."
	DefaultTTL     = 5
	DefaultTimeout = 2 * time.Second
)

// Server answers the zone authoritatively and forwards other queries upstream.
// Set the fields, then call Start; do not change them afterwards.
type Server struct {
	// Addrs are the listen addresses ("127.0.0.1:53", "172.30.0.1:53"); each is
	// served over UDP and TCP. Port 0 picks a free port, the same for both.
	Addrs []string
	// Zone is the authoritative zone, default "vm.".
	Zone string
	// Lookup maps a VM name (the single label before the zone, lower case) to
	// its address. It is called for every query, so changes show at once.
	Lookup func(name string) (netip.Addr, bool)
	// Upstreams are "ip:port" resolvers for names outside the zone. Nil means
	// DefaultUpstreams, re-read when the resolv.conf file changes; an empty
	// non-nil slice disables forwarding (such queries get SERVFAIL).
	Upstreams []string
	// TTL of the zone's records and the SOA minimum, default 5.
	TTL uint32
	// Timeout for one upstream exchange, default 2s.
	Timeout time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Filter, when set, decides per client which names outside the zone
	// are resolved (see Filter); nil forwards every query.
	Filter Filter

	mu      sync.Mutex
	servers []*mdns.Server
	bound   []string
	nsAddr  netip.Addr
	wg      sync.WaitGroup
	fwd     *forwarder
	started bool
}

// Start listens on every address and serves until Close. When one address
// fails, Start closes what it opened and returns an error naming it.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("starting dns server: already started")
	}
	if len(s.Addrs) == 0 {
		return errors.New("starting dns server: no listen addresses")
	}
	if s.Zone == "" {
		s.Zone = DefaultZone
	}
	s.Zone = strings.ToLower(mdns.Fqdn(s.Zone))
	if s.TTL == 0 {
		s.TTL = DefaultTTL
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}

	type pair struct {
		pc net.PacketConn
		l  net.Listener
	}
	var pairs []pair
	closeAll := func() {
		for _, p := range pairs {
			p.pc.Close()
			p.l.Close()
		}
	}
	var bound []string
	for _, addr := range s.Addrs {
		pc, l, err := listenPair(addr)
		if err != nil {
			closeAll()
			return err
		}
		pairs = append(pairs, pair{pc, l})
		bound = append(bound, pc.LocalAddr().String())
	}

	s.bound = bound
	s.nsAddr = nameServerAddr(bound)
	s.fwd = newForwarder(s.Upstreams, bound, s.Timeout, s.Log)

	handler := mdns.HandlerFunc(s.serveDNS)
	for _, p := range pairs {
		for _, srv := range []*mdns.Server{
			{PacketConn: p.pc, Handler: handler},
			{Listener: p.l, Handler: handler, ReadTimeout: 5 * time.Second},
		} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			s.servers = append(s.servers, srv)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				if err := srv.ActivateAndServe(); err != nil {
					s.Log.Error("serving dns", "err", err)
				}
			}()
			<-started
		}
	}
	s.started = true
	s.Log.Info("dns server started", "zone", s.Zone, "addrs", bound, "upstreams", s.fwd.describe())
	return nil
}

// Close stops every listener and waits for the serving goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.started = false
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping dns listener: %w", err))
		}
		cancel()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// Addr is the first bound address ("127.0.0.1:40123"), or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bound) == 0 {
		return ""
	}
	return s.bound[0]
}

// BoundAddrs are the bound addresses, one per entry of Addrs, in order.
func (s *Server) BoundAddrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bound...)
}

// listenPair opens UDP and TCP on addr, using the same port for both.
func listenPair(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	tries := 1
	if port == "0" {
		tries = 20 // The free UDP port may be taken for TCP; pick another.
	}
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, listenError("udp", addr, err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if i+1 >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, listenError("tcp", addr, err)
		}
	}
}

// ListenError is Start's error when one address cannot be listened on.
type ListenError struct {
	// Addr is the address as given in Server.Addrs.
	Addr string
	Err  error
}

func (e *ListenError) Error() string { return e.Err.Error() }
func (e *ListenError) Unwrap() error { return e.Err }

// listenError names the address and hints at the usual fixes.
func listenError(network, addr string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err // Drop Go's "listen udp <addr>:" prefix; we name it ourselves.
	}
	var hint string
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = ": set dns_listen in the config to another address"
	case errors.Is(err, syscall.EACCES):
		hint = ": ports below 1024 need root or CAP_NET_BIND_SERVICE"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		hint = ": no interface has this address (is the bridge up?)"
	}
	return &ListenError{Addr: addr, Err: fmt.Errorf("listening on %s %s: %w%s", network, addr, err, hint)}
}

// nameServerAddr is the address ns.<zone> resolves to: the first specific
// listen address, else loopback.
func nameServerAddr(bound []string) netip.Addr {
	for _, b := range bound {
		ap, err := netip.ParseAddrPort(b)
		if err == nil && !ap.Addr().IsUnspecified() {
			return ap.Addr().Unmap().WithZone("")
		}
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// serveDNS answers one query.
func (s *Server) serveDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	resp := s.answer(req, isTCP(w), clientAddr(w))
	if resp == nil {
		return
	}
	if err := w.WriteMsg(resp); err != nil {
		s.Log.Debug("writing dns answer", "client", w.RemoteAddr(), "err", err)
	}
}

func isTCP(w mdns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// answer builds the response to req; tcp says how the client asked and
// client is who asked.
func (s *Server) answer(req *mdns.Msg, tcp bool, client netip.Addr) *mdns.Msg {
	if len(req.Question) != 1 {
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeFormatError)
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !mdns.IsSubDomain(s.Zone, name) {
		if s.Filter != nil && client.IsValid() {
			return s.filtered(req, tcp, client, name)
		}
		return s.forward(req, tcp)
	}

	m := new(mdns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = s.fwd.enabled()
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, false)
	}
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		m.Authoritative = false
		m.Rcode = mdns.RcodeRefused
		return m
	}
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		m.Rcode = mdns.RcodeRefused
		return m
	}

	owner := q.Name // Echo the client's spelling in answers.
	switch {
	case name == s.Zone:
		if q.Qtype == mdns.TypeSOA || q.Qtype == mdns.TypeANY {
			m.Answer = append(m.Answer, s.soa())
		}
		if q.Qtype == mdns.TypeNS || q.Qtype == mdns.TypeANY {
			m.Answer = append(m.Answer, s.ns())
			m.Extra = append(m.Extra, s.addrRR(s.nsName(), mdns.TypeANY, s.nsAddr)...)
		}
	case name == s.nsName():
		m.Answer = s.addrRR(owner, q.Qtype, s.nsAddr)
	default:
		label := strings.TrimSuffix(name, "."+s.Zone)
		addr, ok := s.lookup(label)
		if !ok {
			m.Rcode = mdns.RcodeNameError
			break
		}
		m.Answer = s.addrRR(owner, q.Qtype, addr)
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa())
	}
	return m
}

// ednsSize is the UDP payload size we advertise (the DNS flag day value).
const ednsSize = 1232

// lookup resolves one VM label; multi-label names never exist.
func (s *Server) lookup(label string) (netip.Addr, bool) {
	if label == "" || strings.Contains(label, ".") || s.Lookup == nil {
		return netip.Addr{}, false
	}
	addr, ok := s.Lookup(label)
	if !ok || !addr.IsValid() {
		return netip.Addr{}, false
	}
	return addr.Unmap(), true
}

func (s *Server) nsName() string { return "ns." + s.Zone }

func (s *Server) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: s.TTL}
}

// addrRR returns addr as an A or AAAA record when qtype asks for it.
func (s *Server) addrRR(name string, qtype uint16, addr netip.Addr) []mdns.RR {
	switch {
	case addr.Is4() && (qtype == mdns.TypeA || qtype == mdns.TypeANY):
		return []mdns.RR{&mdns.A{Hdr: s.hdr(name, mdns.TypeA), A: addr.AsSlice()}}
	case addr.Is6() && (qtype == mdns.TypeAAAA || qtype == mdns.TypeANY):
		return []mdns.RR{&mdns.AAAA{Hdr: s.hdr(name, mdns.TypeAAAA), AAAA: addr.AsSlice()}}
	}
	return nil
}

func (s *Server) ns() mdns.RR {
	return &mdns.NS{Hdr: s.hdr(s.Zone, mdns.TypeNS), Ns: s.nsName()}
}

// soa is the zone's SOA; the serial is the time, since the VM set has no version.
func (s *Server) soa() mdns.RR {
	return &mdns.SOA{
		Hdr:     s.hdr(s.Zone, mdns.TypeSOA),
		Ns:      s.nsName(),
		Mbox:    "hostmaster." + s.Zone,
		Serial:  uint32(time.Now().Unix()),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  s.TTL,
	}
}

// forward sends req upstream and relays the answer, sized for the client.
func (s *Server) forward(req *mdns.Msg, tcp bool) *mdns.Msg {
	resp, err := s.fwd.exchange(req)
	if err != nil {
		return s.forwardFailed(req, err)
	}
	return s.relay(req, resp, tcp)
}

// forwardFailed is the SERVFAIL for a query no upstream answered.
func (s *Server) forwardFailed(req *mdns.Msg, err error) *mdns.Msg {
	s.Log.Debug("forwarding dns query", "name", req.Question[0].Name, "err", err)
	return s.servfail(req)
}

// relay returns an upstream answer to the client, sized for it.
func (s *Server) relay(req, resp *mdns.Msg, tcp bool) *mdns.Msg {
	resp.Id = req.Id
	if !tcp {
		size := mdns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), mdns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	return resp
}
