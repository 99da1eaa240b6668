package web

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/banger/banger/internal/web/peer"
)

// Timeouts bound the web listener's connections. The UI never streams: a
// long operation runs in bangerd and its page polls, so each request is
// short, and these can be tight.
type Timeouts struct {
	// ReadHeader bounds reading a request's headers (default 10s).
	ReadHeader time.Duration
	// Read bounds reading a whole request, body included (default 30s).
	Read time.Duration
	// Write bounds answering a request, from the end of its headers. The
	// slowest answer is a stop or delete that waits for a guest to shut
	// down (default 3m).
	Write time.Duration
	// Idle closes a keep-alive connection with no request (default 60s).
	Idle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.ReadHeader, 10*time.Second)
	def(&t.Read, 30*time.Second)
	def(&t.Write, 3*time.Minute)
	def(&t.Idle, 60*time.Second)
	return t
}

// Connection caps. Each peer uid gets its own share, so one local user's
// flood of connections can neither exhaust bangerd's file descriptors nor
// lock the owner out: connections beyond a share are closed at once.
const (
	// perPeerConns is the share of one uid (another host's browsers
	// share one); a browser uses about six.
	perPeerConns = 64
	// maxConns caps the connections of everyone but the owner.
	maxConns = 512
	// maxHeaderBytes caps a request's headers.
	maxHeaderBytes = 16 << 10
)

// Serve serves the UI on ln in the background and returns its server, for
// Close or Shutdown. Each connection's peer is identified once, when it is
// accepted (peer.UID), and recorded for the request handlers.
func (s *Server) Serve(ln net.Listener) *http.Server {
	s.init()
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.timeouts.ReadHeader,
		ReadTimeout:       s.timeouts.Read,
		WriteTimeout:      s.timeouts.Write,
		IdleTimeout:       s.timeouts.Idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return withPeer(ctx, pc.peer)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(s.log().Handler(), slog.LevelDebug),
	}
	go srv.Serve(s.limit(ln))
	return srv
}

// limit wraps ln so that each accepted connection is identified and
// counted against its peer's share.
func (s *Server) limit(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, s: s, open: map[int]int{}}
}

type limitListener struct {
	net.Listener
	s *Server

	mu     sync.Mutex
	open   map[int]int // connections by peer uid
	others int         // connections of everyone but the owner
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p := l.s.identify(c)
		if !l.take(p.uid) {
			c.Close()
			if n, ok := l.s.refusals.allow(time.Now()); ok {
				l.s.log().Warn("web: closed a connection beyond its peer's share", "peer_uid", p.uid,
					"per_peer", perPeerConns, "max", maxConns, "more_refused", n)
			}
			continue
		}
		return &peerConn{Conn: c, peer: p, l: l}, nil
	}
}

// take counts a new connection of uid, or reports that it is over a cap.
func (l *limitListener) take(uid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	owner := uid >= 0 && uid == l.s.owner
	if l.open[uid] >= perPeerConns || (!owner && l.others >= maxConns) {
		return false
	}
	l.open[uid]++
	if !owner {
		l.others++
	}
	return true
}

func (l *limitListener) release(uid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[uid]--; l.open[uid] <= 0 {
		delete(l.open, uid)
	}
	if uid < 0 || uid != l.s.owner {
		l.others--
	}
}

// identify finds the uid at the other end of c.
func (s *Server) identify(c net.Conn) peerInfo {
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return peerInfo{uid: unknownUID, err: errors.New("not a TCP connection")}
	}
	uid, err := s.peerUID(local.AddrPort(), remote.AddrPort())
	switch {
	case err == nil && uid >= 0:
		return peerInfo{uid: uid}
	case errors.Is(err, peer.ErrNotLocal):
		return peerInfo{uid: remoteUID, err: err}
	case err == nil:
		err = errors.New("the lookup returned no uid")
	}
	s.log().Debug("web: cannot identify a connection's peer", "remote", remote, "err", err)
	return peerInfo{uid: unknownUID, err: err}
}

// peerConn is an accepted connection with its peer; closing it frees its
// place in the peer's share.
type peerConn struct {
	net.Conn
	peer peerInfo
	l    *limitListener
	once sync.Once
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.peer.uid) })
	return err
}

// URL is the address of a UI listening on addr, for links: a listener on
// every address is reached through 127.0.0.1.
func URL(addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return "http://" + addr.String()
	}
	ap := ta.AddrPort()
	ip := ap.Addr().Unmap()
	if ip.IsUnspecified() {
		ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return "http://" + netip.AddrPortFrom(ip, ap.Port()).String()
}
