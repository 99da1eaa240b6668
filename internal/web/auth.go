package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/user"
	"strconv"
	"sync"
	"time"

	"github.com/banger/banger/internal/web/login"
)

// Who is at the other end of a connection.
const (
	// unknownUID: the lookup failed, or the request came without the
	// listener that identifies peers. It matches no owner, link or cookie.
	unknownUID = -2
	// remoteUID: no local socket is the other end (another host).
	remoteUID = login.Remote
)

// peerInfo is what the listener found out about a connection's peer.
type peerInfo struct {
	uid int // a local uid, remoteUID or unknownUID
	err error
}

type peerKey struct{}

// peerOf returns the peer of the connection a request came on.
func peerOf(ctx context.Context) peerInfo {
	if p, ok := ctx.Value(peerKey{}).(peerInfo); ok {
		return p
	}
	return peerInfo{uid: unknownUID, err: errors.New("the connection did not come through the web UI's listener")}
}

// withPeer records a connection's peer in ctx.
func withPeer(ctx context.Context, p peerInfo) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// How a request was let in.
type authKey struct{}

const (
	viaOwner   = "owner"   // the daemon owner's own local connection
	viaSession = "session" // a login cookie from 'banger ui''s link
)

// sessionCookie is the login cookie's name (New appends the port).
const sessionCookie = "banger_session"

// authorize lets in the daemon owner's local connections (unless
// LoginOnly) and browsers with a login cookie bound to their peer.
func (s *Server) authorize(r *http.Request, p peerInfo) (string, error) {
	var cookieErr error
	if c, err := r.Cookie(s.cookieName); err == nil && s.checker != nil {
		if cookieErr = s.checker.Session(c.Value, p.uid, time.Now()); cookieErr == nil {
			return viaSession, nil
		}
	}
	if !s.loginOnly && p.uid >= 0 && p.uid == s.owner {
		return viaOwner, nil
	}
	what := fmt.Sprintf("refusing %s %s: ", r.Method, r.URL.Path)
	hint := "open the link that 'banger ui' prints when " + s.ownerName + " runs it, which logs this browser in"
	if s.owner == 0 {
		hint = "run 'sudo banger ui' and open the link it prints, which logs this browser in"
	}
	if s.checker == nil {
		hint = "logins are off in this bangerd"
	}
	var msg string
	switch {
	case s.loginOnly:
		msg = what + "banger's web UI needs a login (web_auth = \"login\"): " + hint
	case p.uid == unknownUID:
		msg = fmt.Sprintf("%scannot tell which user this connection comes from (%v): %s", what, p.err, hint)
	case p.uid == remoteUID:
		msg = what + "this connection comes from another host, and this web UI answers only to " + s.ownerName + "'s own connections: " + hint
	default:
		msg = fmt.Sprintf("%sthis web UI belongs to %s, and this connection comes from uid %d: %s", what, s.ownerName, p.uid, hint)
	}
	if cookieErr != nil {
		msg += " (" + cookieErr.Error() + ")"
	}
	return "", errors.New(msg)
}

// login redeems a one-time token from 'banger ui' for a session cookie
// bound to the peer that redeemed it, and goes to the VM list.
func (s *Server) login(w http.ResponseWriter, r *http.Request, p peerInfo) {
	if s.checker == nil {
		s.fail(w, r, http.StatusNotFound, errors.New("logging in: logins are off in this bangerd"))
		return
	}
	value, exp, err := s.checker.Redeem(r.URL.Query().Get("token"), p.uid, time.Now())
	if err != nil {
		s.refuse(r, "web: refused login", "peer_uid", p.uid, "err", err)
		s.fail(w, r, http.StatusForbidden, fmt.Errorf("logging in: %w", err))
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName, Value: value, Path: "/", Expires: exp, MaxAge: int(time.Until(exp).Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	s.log().Info("web: browser logged in", "peer_uid", p.uid, "remote", r.RemoteAddr)
	setFlash(w, "ok", "logged in")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout forgets the browser's login cookie.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	setFlash(w, "ok", "logged out")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// refuse logs a refused request, at most once a second so that a flood
// cannot fill the log.
func (s *Server) refuse(r *http.Request, msg string, args ...any) {
	if n, ok := s.refusals.allow(time.Now()); ok {
		args = append(args, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		if n > 0 {
			args = append(args, "more_refused", n)
		}
		s.log().Warn(msg, args...)
	}
}

// logLimiter lets one log line through per second and counts the others.
type logLimiter struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (l *logLimiter) allow(now time.Time) (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) < time.Second {
		l.dropped++
		return 0, false
	}
	l.last, dropped, l.dropped = now, l.dropped, 0
	return dropped, true
}

// userName names a uid for messages: "alice (uid 1000)".
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username + " (uid " + strconv.Itoa(uid) + ")"
	}
	return "uid " + strconv.Itoa(uid)
}
