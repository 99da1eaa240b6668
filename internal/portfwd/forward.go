package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Why a host port cannot be listened on; errors.Is tells Listen's and
// Probe's errors apart by them.
var (
	// ErrInUse: something else listens on the host port already.
	ErrInUse = errors.New("host port in use")
	// ErrDenied: this process may not listen there (a port below 1024 for
	// an unprivileged bangerd).
	ErrDenied = errors.New("host port not allowed")
	// ErrNoAddress: the host address is not one of the host's.
	ErrNoAddress = errors.New("host address not on this host")
)

// listenError is a refused listen: its message says what to do, kind says
// why (ErrInUse and the others), and it wraps the socket's error.
type listenError struct {
	kind  error
	msg   string
	cause error
}

func (e *listenError) Error() string        { return e.msg }
func (e *listenError) Unwrap() error        { return e.cause }
func (e *listenError) Is(target error) bool { return target == e.kind }

// Limits bound what one forward takes from the host; the zero value of a
// field means its default. The guest is untrusted: it may hold connections
// open, answer slowly or flood datagrams, and gets no more than these.
type Limits struct {
	// MaxConns is how many TCP connections one forward relays at once
	// (default 128); beyond it new connections are closed at once.
	MaxConns int
	// MaxSessions is how many UDP peers one forward relays for at once
	// (default 128); datagrams of further peers are dropped.
	MaxSessions int
	// UDPIdle ends a UDP session that saw no datagram either way for this
	// long (default 60s).
	UDPIdle time.Duration
	// DialTimeout bounds connecting to the guest (default 5s).
	DialTimeout time.Duration
	// BufSize is the copy buffer of each direction of a TCP connection
	// when the kernel cannot splice (default 32 KiB).
	BufSize int
}

func (l Limits) withDefaults() Limits {
	if l.MaxConns <= 0 {
		l.MaxConns = 128
	}
	if l.MaxSessions <= 0 {
		l.MaxSessions = 128
	}
	if l.UDPIdle <= 0 {
		l.UDPIdle = 60 * time.Second
	}
	if l.DialTimeout <= 0 {
		l.DialTimeout = 5 * time.Second
	}
	if l.BufSize <= 0 {
		l.BufSize = 32 << 10
	}
	return l
}

// Config is how a forward serves: its bounds, whom it turns away, where
// it logs.
type Config struct {
	Limits
	// Refuse, when set, turns away the peers it reports true for: their
	// connections are closed at once and their datagrams dropped, before
	// anything reaches the guest. bangerd refuses its own guests, so that
	// a port published on an address guests reach (0.0.0.0) is no way
	// around guest isolation.
	Refuse func(peer netip.Addr) bool
	// Log gets the forward's warnings (nil: slog's default).
	Log *slog.Logger
}

// maxDatagram is the largest UDP payload (IPv4 and IPv6 without jumbograms).
const maxDatagram = 65535

// Dialer connects to the guest.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Stats are a forward's counters.
type Stats struct {
	// Active is the TCP connections (or UDP sessions) relayed now.
	Active int
	// Accepted is every TCP connection accepted (or UDP session begun).
	Accepted uint64
	// Refused is the connections closed (or datagrams dropped) at a limit.
	Refused uint64
	// DialFailed is the connections (or sessions) the guest did not take.
	DialFailed uint64
	// RefusedPeers is the connections (or datagrams) of refused peers.
	RefusedPeers uint64
}

// Forward is one published port, listening from Listen until Close.
type Forward struct {
	spec   Spec
	guest  netip.AddrPort
	dial   Dialer
	lim    Limits
	refuse func(netip.Addr) bool
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ln   net.Listener // tcp
	pc   *net.UDPConn // udp
	bufs sync.Pool

	mu       sync.Mutex
	conns    map[net.Conn]struct{} // tcp: both ends of every relayed connection
	sessions map[netip.AddrPort]*udpSession
	closed   bool

	active                                     atomic.Int64
	accepted, refused, dialFails, refusedPeers atomic.Uint64
	lastWarn                                   atomic.Int64 // unix nanoseconds of the last limit warning
}

// Listen binds spec's host address and relays what arrives to guest's
// GuestPort until Close. A busy port is an error wrapping ErrInUse, a
// privileged one ErrDenied, a foreign address ErrNoAddress; nothing is
// left listening then.
func Listen(spec Spec, guest netip.Addr, dial Dialer, cfg Config) (*Forward, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	refuse := cfg.Refuse
	if refuse == nil {
		refuse = func(netip.Addr) bool { return false }
	}
	f := &Forward{spec: spec, guest: netip.AddrPortFrom(guest, spec.GuestPort), dial: dial, lim: cfg.Limits.withDefaults(), refuse: refuse,
		log: log.With("port", spec.String()), conns: map[net.Conn]struct{}{}, sessions: map[netip.AddrPort]*udpSession{}}
	f.bufs.New = func() any { b := make([]byte, f.lim.BufSize); return &b }
	f.ctx, f.cancel = context.WithCancel(context.Background())
	var err error
	switch spec.Proto {
	case TCP:
		f.ln, err = net.ListenTCP(network(spec), net.TCPAddrFromAddrPort(netip.AddrPortFrom(spec.HostIP, spec.HostPort)))
	case UDP:
		f.pc, err = net.ListenUDP(network(spec), net.UDPAddrFromAddrPort(netip.AddrPortFrom(spec.HostIP, spec.HostPort)))
	}
	if err != nil {
		f.cancel()
		return nil, refused(spec, err)
	}
	f.wg.Add(1)
	if spec.Proto == TCP {
		go f.acceptLoop()
	} else {
		go f.udpLoop()
	}
	return f, nil
}

// Probe reports whether spec's host port could be listened on now, by
// listening and closing at once; the error is Listen's.
func Probe(spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	var c io.Closer
	var err error
	switch spec.Proto {
	case TCP:
		c, err = net.ListenTCP(network(spec), net.TCPAddrFromAddrPort(netip.AddrPortFrom(spec.HostIP, spec.HostPort)))
	case UDP:
		c, err = net.ListenUDP(network(spec), net.UDPAddrFromAddrPort(netip.AddrPortFrom(spec.HostIP, spec.HostPort)))
	}
	if err != nil {
		return refused(spec, err)
	}
	return c.Close()
}

// network is the socket family of spec's host address; the unspecified
// IPv6 address listens on IPv4 as well.
func network(s Spec) string {
	switch {
	case s.HostIP.Is4():
		return s.Proto + "4"
	case s.HostIP.IsUnspecified():
		return s.Proto
	}
	return s.Proto + "6"
}

// refused says why a host port cannot be listened on, and what to do.
func refused(s Spec, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return &listenError{ErrInUse, fmt.Sprintf("host port %s/%s is already in use: pick another host port (see 'ss -lntup' for what listens there)", s.Host(), s.Proto), err}
	case errors.Is(err, syscall.EACCES):
		return &listenError{ErrDenied, fmt.Sprintf("host port %s/%s: bangerd may not listen on ports below 1024 as an ordinary user: pick a host port of 1024 or more", s.Host(), s.Proto), err}
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return &listenError{ErrNoAddress, fmt.Sprintf("host address %s is not an address of this host: use 127.0.0.1 (the default), 0.0.0.0 or one of the host's addresses", s.HostIP), err}
	}
	return fmt.Errorf("listening on host port %s/%s: %w", s.Host(), s.Proto, err)
}

// Spec is what the forward publishes.
func (f *Forward) Spec() Spec { return f.spec }

// Addr is the host address the forward listens on.
func (f *Forward) Addr() net.Addr {
	if f.ln != nil {
		return f.ln.Addr()
	}
	return f.pc.LocalAddr()
}

// Stats returns the forward's counters.
func (f *Forward) Stats() Stats {
	return Stats{Active: int(f.active.Load()), Accepted: f.accepted.Load(), Refused: f.refused.Load(), DialFailed: f.dialFails.Load(),
		RefusedPeers: f.refusedPeers.Load()}
}

// refusesPeer reports whether a TCP peer is one to turn away.
func (f *Forward) refusesPeer(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return true // not a TCP peer: nothing to serve
	}
	ap := ta.AddrPort()
	return f.refuse(ap.Addr().Unmap())
}

// Close stops listening, ends every relayed connection and session, and
// waits for the forward's goroutines. It is idempotent.
func (f *Forward) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		f.wg.Wait()
		return nil
	}
	f.closed = true
	f.cancel()
	var err error
	if f.ln != nil {
		err = f.ln.Close()
	} else {
		err = f.pc.Close()
	}
	for c := range f.conns {
		c.Close()
	}
	for _, s := range f.sessions {
		s.conn.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	if err != nil {
		return fmt.Errorf("closing host port %s/%s: %w", f.spec.Host(), f.spec.Proto, err)
	}
	return nil
}

// warnLimit logs, at most every 10 seconds, that a limit was reached.
func (f *Forward) warnLimit(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := f.lastWarn.Load()
	if now-last < int64(10*time.Second) || !f.lastWarn.CompareAndSwap(last, now) {
		return
	}
	f.log.Warn(msg, args...)
}

// track adds c to the connections Close ends; false when closed already.
func (f *Forward) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Forward) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

func (f *Forward) acceptLoop() {
	defer f.wg.Done()
	var backoff time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			// Out of descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.warnLimit("accepting on a published port", "err", err)
			select {
			case <-time.After(backoff):
			case <-f.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if f.refusesPeer(c.RemoteAddr()) {
			f.refusedPeers.Add(1)
			c.Close()
			continue
		}
		if f.active.Load() >= int64(f.lim.MaxConns) {
			f.refused.Add(1)
			c.Close()
			f.warnLimit("published port at its connection limit; closing new connections", "limit", f.lim.MaxConns)
			continue
		}
		f.active.Add(1)
		f.accepted.Add(1)
		if !f.track(c) {
			c.Close()
			f.active.Add(-1)
			return
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// relay connects c to the guest and copies both ways until both sides
// have finished sending, passing each side's end of data on as a
// half-close.
func (f *Forward) relay(c net.Conn) {
	defer f.wg.Done()
	defer f.active.Add(-1)
	defer func() {
		c.Close()
		f.untrack(c)
	}()
	ctx, cancel := context.WithTimeout(f.ctx, f.lim.DialTimeout)
	g, err := f.dial(ctx, "tcp", f.guest.String())
	cancel()
	if err != nil {
		f.dialFails.Add(1)
		f.log.Debug("guest refused a published connection", "guest", f.guest, "err", err)
		return
	}
	if !f.track(g) {
		g.Close()
		return
	}
	defer func() {
		g.Close()
		f.untrack(g)
	}()
	done := make(chan struct{})
	go func() {
		f.pipe(g, c)
		close(done)
	}()
	f.pipe(c, g)
	<-done
}

// pipe copies src to dst, then half-closes dst (or closes both when a
// side cannot half-close, or on an error).
func (f *Forward) pipe(dst, src net.Conn) {
	bp := f.bufs.Get().(*[]byte)
	_, err := io.CopyBuffer(dst, src, *bp)
	f.bufs.Put(bp)
	cw, ok := dst.(interface{ CloseWrite() error })
	if err != nil || !ok || cw.CloseWrite() != nil {
		dst.Close()
		src.Close()
	}
}

// udpSession is one host peer's flow to the guest: a connected socket of
// its own, so the guest's answers come back to that peer only.
type udpSession struct {
	peer netip.AddrPort
	conn net.Conn
	last atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (s *udpSession) touch() { s.last.Store(time.Now().UnixNano()) }

func (f *Forward) udpLoop() {
	defer f.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, peer, err := f.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			// ICMP errors of earlier sends and the like: keep serving,
			// without spinning on an error that persists.
			f.log.Debug("reading a published UDP port", "err", err)
			select {
			case <-time.After(10 * time.Millisecond):
			case <-f.ctx.Done():
				return
			}
			continue
		}
		if f.refuse(peer.Addr().Unmap()) {
			f.refusedPeers.Add(1)
			continue
		}
		s := f.session(peer)
		if s == nil {
			continue
		}
		s.touch()
		if _, err := s.conn.Write(buf[:n]); err != nil {
			f.log.Debug("relaying a datagram to the guest", "guest", f.guest, "err", err)
		}
	}
}

// session returns peer's session, beginning one within the limit; nil
// drops the datagram.
func (f *Forward) session(peer netip.AddrPort) *udpSession {
	f.mu.Lock()
	s := f.sessions[peer]
	n := len(f.sessions)
	f.mu.Unlock()
	if s != nil {
		return s
	}
	if n >= f.lim.MaxSessions {
		f.refused.Add(1)
		f.warnLimit("published UDP port at its session limit; dropping datagrams of new peers", "limit", f.lim.MaxSessions)
		return nil
	}
	ctx, cancel := context.WithTimeout(f.ctx, f.lim.DialTimeout)
	conn, err := f.dial(ctx, "udp", f.guest.String())
	cancel()
	if err != nil {
		f.dialFails.Add(1)
		f.log.Debug("opening a UDP session to the guest", "guest", f.guest, "err", err)
		return nil
	}
	s = &udpSession{peer: peer, conn: conn}
	s.touch()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		conn.Close()
		return nil
	}
	f.sessions[peer] = s
	f.mu.Unlock()
	f.active.Add(1)
	f.accepted.Add(1)
	f.wg.Add(1)
	go f.udpReturn(s)
	return s
}

// udpReturn relays the guest's datagrams of one session back to its peer
// until the session is idle for UDPIdle or the forward closes.
func (f *Forward) udpReturn(s *udpSession) {
	defer f.wg.Done()
	defer func() {
		s.conn.Close()
		f.mu.Lock()
		if f.sessions[s.peer] == s {
			delete(f.sessions, s.peer)
		}
		f.mu.Unlock()
		f.active.Add(-1)
	}()
	buf := make([]byte, maxDatagram)
	failures := 0
	for {
		idleFor := time.Since(time.Unix(0, s.last.Load()))
		if idleFor >= f.lim.UDPIdle {
			return
		}
		s.conn.SetReadDeadline(time.Now().Add(f.lim.UDPIdle - idleFor))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // idle check at the top
			}
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// The guest's port is closed (ICMP): keep the session, as a
			// later datagram may find it open; end it when errors persist.
			if failures++; failures > 16 {
				return
			}
			continue
		}
		failures = 0
		s.touch()
		if _, err := f.pc.WriteToUDPAddrPort(buf[:n], s.peer); err != nil && f.ctx.Err() != nil {
			return
		}
	}
}
