// Package web serves bangerd's local web UI, an HTML front end over the same RPC client the CLI uses.
package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/web/login"
	"github.com/banger/banger/internal/web/peer"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pageNames are the templates parsed at construction, each with templates/layout.html.
var pageNames = []string{"vms", "vm", "images", "files", "op", "error"}

// Options configures New.
type Options struct {
	// Log receives the UI's log lines; nil means slog.Default().
	Log *slog.Logger
	// Context bounds the background operations (create, start, build) the
	// UI starts; pass bangerd's lifetime context. nil means context.Background().
	Context context.Context
	// Owner is the uid whose local connections the UI answers without a
	// login: bangerd's own, os.Getuid().
	Owner int
	// LoginOnly makes every browser log in with the link 'banger ui'
	// prints: the peer's uid alone is not enough (web_auth = "login").
	LoginOnly bool
	// Login is the secret file that signs login links and session
	// cookies; nil turns logins off.
	Login *login.File
	// FileRoots are the directories the file picker shows, and the only
	// places the UI registers images from; none turns the picker off.
	FileRoots []string
	// PeerUID finds the uid owning the other end of a connection
	// (peer.UID); nil means peer.UID. Tests replace it.
	PeerUID func(local, remote netip.AddrPort) (int, error)
	// Timeouts of Serve's HTTP server; zero fields take the defaults.
	Timeouts Timeouts
}

// Server is bangerd's web UI. Build it with New.
type Server struct {
	// Client talks to bangerd's own socket: the UI uses exactly the API the CLI uses.
	Client *rpc.Client
	// Log receives the UI's log lines; nil means slog.Default().
	Log *slog.Logger
	// FileRoots are where the server-side file picker may go.
	FileRoots []string

	ctx        context.Context
	owner      int
	ownerName  string
	loginOnly  bool
	checker    *login.Checker
	cookieName string
	peerUID    func(local, remote netip.AddrPort) (int, error)
	timeouts   Timeouts
	refusals   logLimiter

	pages      map[string]*template.Template
	ops        *opTable
	logTimeout time.Duration // bounds reading a console log for the VM page
	once       sync.Once
	initErr    error
}

// New returns a UI server talking to bangerd through client. It parses the
// embedded templates once and fails if one does not parse.
func New(client *rpc.Client, opts Options) (*Server, error) {
	return newServer(client, opts, templateFS)
}

// newServer is New with the template files taken from fsys, so tests can
// inject broken templates.
func newServer(client *rpc.Client, opts Options, fsys fs.FS) (*Server, error) {
	pages, err := parseTemplates(fsys)
	if err != nil {
		return nil, err
	}
	s := &Server{Client: client, Log: opts.Log, FileRoots: opts.FileRoots, ctx: opts.Context, pages: pages,
		owner: opts.Owner, loginOnly: opts.LoginOnly, peerUID: opts.PeerUID, timeouts: opts.Timeouts}
	if opts.Login != nil {
		s.checker = login.NewChecker(opts.Login)
		if _, port, err := net.SplitHostPort(opts.Login.Listen); err == nil {
			// Browsers send a cookie to every port of a host: the port in
			// its name keeps two bangerds' logins apart.
			s.cookieName = sessionCookie + "_" + port
		}
	}
	s.init()
	return s, nil
}

func parseTemplates(fsys fs.FS) (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, p := range pageNames {
		t, err := template.New(p).Funcs(funcs).ParseFS(fsys, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("parsing web template %s: %w", p, err)
		}
		pages[p] = t
	}
	return pages, nil
}

// init fills the defaults; a Server built without New parses the embedded
// templates here.
func (s *Server) init() {
	s.once.Do(func() {
		if s.pages == nil {
			s.pages, s.initErr = parseTemplates(templateFS)
		}
		if s.ctx == nil {
			s.ctx = context.Background()
		}
		if s.cookieName == "" {
			s.cookieName = sessionCookie
		}
		if s.peerUID == nil {
			s.peerUID = peer.UID
		}
		s.timeouts = s.timeouts.withDefaults()
		s.ownerName = userName(s.owner)
		if s.logTimeout == 0 {
			s.logTimeout = 3 * time.Second
		}
		s.ops = newOpTable()
	})
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// Handler returns the UI's HTTP handler, with its loopback Host check, its
// cross-origin check on POST and its security headers.
func (s *Server) Handler() http.Handler {
	s.init()
	if s.initErr != nil {
		err := s.initErr
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "banger web UI: "+err.Error(), http.StatusInternalServerError)
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.listVMs)
	mux.HandleFunc("POST /vms", s.createVM)
	mux.HandleFunc("GET /vms/{name}", s.showVM)
	mux.HandleFunc("POST /vms/{name}/start", s.startVM)
	mux.HandleFunc("POST /vms/{name}/stop", s.stopVM)
	mux.HandleFunc("POST /vms/{name}/suspend", s.suspendVM)
	mux.HandleFunc("POST /vms/{name}/delete", s.deleteVM)
	mux.HandleFunc("POST /vms/{name}/nat", s.setNAT)
	mux.HandleFunc("GET /images", s.listImages)
	mux.HandleFunc("POST /images", s.registerImage)
	mux.HandleFunc("POST /images/{name}/delete", s.deleteImage)
	mux.HandleFunc("POST /images/build", s.buildImage)
	mux.HandleFunc("GET /files", s.files)
	mux.HandleFunc("GET /ops/{id}", s.showOp)
	mux.HandleFunc("POST /logout", s.logout)
	mux.Handle("GET /static/", staticHandler())
	return s.guard(mux)
}

func staticHandler() http.Handler {
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	files := http.StripPrefix("/static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// csp allows only this origin's own files: no inline script or style.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// guard sets the security headers, refuses foreign Host headers (DNS
// rebinding), answers only the owner's connections and logged-in browsers,
// and refuses cross-origin state changes (CSRF).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			h.Set("Cache-Control", "no-store")
		}
		// With web_auth = "login" every request needs the session cookie,
		// which browsers never send to a rebound name: any Host may ask.
		if !s.loginOnly && !loopbackHost(r.Host) {
			s.refuse(r, "web: refused request with a foreign Host header", "host", r.Host)
			s.fail(w, r, http.StatusMisdirectedRequest, fmt.Errorf(
				"refusing request for host %q: banger's web UI answers only to 127.0.0.1, localhost or [::1]; open http://127.0.0.1 with the port you use", r.Host))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		p := peerOf(r.Context())
		// GET only: a HEAD (a link preview) must not use up a token.
		if r.URL.Path == "/login" && r.Method == http.MethodGet {
			s.login(w, r, p)
			return
		}
		via, err := s.authorize(r, p)
		if err != nil {
			s.refuse(r, "web: refused request", "peer_uid", p.uid, "err", err)
			s.fail(w, r, http.StatusForbidden, err)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := sameOrigin(r); err != nil {
				s.refuse(r, "web: refused cross-origin request", "err", err)
				s.fail(w, r, http.StatusForbidden, err)
				return
			}
			// Read the form here, so that an oversized body is refused
			// the same way by every handler.
			if err := r.ParseForm(); err != nil {
				status := http.StatusBadRequest
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					status = http.StatusRequestEntityTooLarge
					err = fmt.Errorf("the body is too large (the limit is %d KiB)", maxBody>>10)
				}
				s.fail(w, r, status, fmt.Errorf("refusing %s %s: reading the form: %w", r.Method, r.URL.Path, err))
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), authKey{}, via)))
	})
}

// maxBody caps every request body: the UI's forms are small.
const maxBody = 64 << 10

// loopbackHost reports whether a Host header names this machine's loopback:
// localhost, 127.0.0.0/8 or ::1, with any port.
func loopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Zone() == "" && ip.IsLoopback()
}

// sameOrigin checks that a state-changing request comes from a page of this
// host: its Origin, or without one its Referer, must name r.Host.
func sameOrigin(r *http.Request) error {
	check := func(header, v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
			return fmt.Errorf("refusing %s %s: its %s %q is not this page's origin (http://%s); banger's web UI accepts changes only from its own pages",
				r.Method, r.URL.Path, header, v, r.Host)
		}
		return nil
	}
	if o := r.Header.Get("Origin"); o != "" {
		return check("Origin", o)
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		return check("Referer", ref)
	}
	return fmt.Errorf("refusing %s %s: it has neither an Origin nor a Referer header; send Origin: http://%s", r.Method, r.URL.Path, r.Host)
}

// wantsJSON reports whether the client asked for JSON with its Accept header.
func wantsJSON(r *http.Request) bool {
	for part := range strings.SplitSeq(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(part, ";")
		if strings.EqualFold(strings.TrimSpace(mt), "application/json") {
			return true
		}
	}
	return false
}

// flash is a one-line message shown at the top of a page.
type flash struct {
	Kind    string // "ok" or "error"
	Message string
}

// base is what every page's layout needs.
type base struct {
	Title   string
	Nav     string
	Flashes []flash
	// LoggedIn shows the log-out button: the browser came in with a login
	// cookie.
	LoggedIn bool
}

func (b *base) addError(err error) {
	b.Flashes = append(b.Flashes, flash{Kind: "error", Message: err.Error()})
}

// newBase builds a page's common data, taking the flash cookie.
func newBase(w http.ResponseWriter, r *http.Request, title, nav string) base {
	b := base{Title: title, Nav: nav, LoggedIn: r.Context().Value(authKey{}) == viaSession}
	if f := takeFlash(w, r); f != nil {
		b.Flashes = append(b.Flashes, *f)
	}
	return b
}

const flashCookie = "banger_flash"

// setFlash stores a message for the next page in a short-lived cookie, so
// no link can put words on the UI's pages.
func setFlash(w http.ResponseWriter, kind, msg string) {
	msg = truncate(msg, 1500)
	http.SetCookie(w, &http.Cookie{
		Name:     flashCookie,
		Value:    base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + msg)),
		Path:     "/",
		MaxAge:   60,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	})
}

// takeFlash returns and clears the flash cookie's message.
func takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return nil
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return nil
	}
	kind, msg, ok := strings.Cut(string(b), ":")
	if !ok || (kind != "ok" && kind != "error") || !utf8.ValidString(msg) {
		return nil
	}
	return &flash{Kind: kind, Message: msg}
}

// truncate shortens s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// localPath returns back if it is a path on this site, else def: redirects
// never leave the UI.
func localPath(back, def string) string {
	if back == "" || !strings.HasPrefix(back, "/") || strings.HasPrefix(back, "//") || strings.HasPrefix(back, "/\\") {
		return def
	}
	u, err := url.Parse(back)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return def
	}
	return back
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 instead of half a page.
func (s *Server) render(w http.ResponseWriter, status int, page string, data any) {
	var buf bytes.Buffer
	err := fmt.Errorf("no template for page %s", page)
	if t := s.pages[page]; t != nil {
		err = t.ExecuteTemplate(&buf, "layout", data)
	}
	if err != nil {
		s.log().Error("web: rendering page", "page", page, "err", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "internal error: rendering the %s page failed (bangerd's log has the details)\n", page)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, `{"error":"encoding the answer failed"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// inputError is a mistake in a form, answered with 400.
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }

func inputErrorf(format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...)}
}

// conflictError is a request that clashes with one in progress, answered
// with 409.
type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }

func conflictf(format string, args ...any) error {
	return &conflictError{msg: fmt.Sprintf(format, args...)}
}

// statusOf maps an error to the HTTP status the UI answers with.
func statusOf(err error) int {
	var ie *inputError
	if errors.As(err, &ie) {
		return http.StatusBadRequest
	}
	var ce *conflictError
	if errors.As(err, &ce) {
		return http.StatusConflict
	}
	var ae *rpc.APIError
	if errors.As(err, &ae) {
		switch ae.Err.Code {
		case rpc.CodeInvalid:
			return http.StatusBadRequest
		case rpc.CodeNotFound:
			return http.StatusNotFound
		case rpc.CodeExists:
			return http.StatusConflict
		case rpc.CodeUnavailable:
			return http.StatusServiceUnavailable
		}
	}
	return http.StatusBadGateway
}

// errorView is the error page.
type errorView struct {
	base
	Status int
}

// fail answers an error: JSON {"error": ...} or the error page.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	if wantsJSON(r) {
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	v := errorView{base: base{Title: http.StatusText(status), Flashes: []flash{{Kind: "error", Message: err.Error()}}}, Status: status}
	s.render(w, status, "error", v)
}

// done answers a finished quick action: JSON, or a redirect to back with a flash.
func (s *Server) done(w http.ResponseWriter, r *http.Request, back string, msg string, err error, vm *rpc.VM) {
	if err != nil {
		s.log().Warn("web: action failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log().Info("web: action done", "method", r.Method, "path", r.URL.Path, "result", msg)
	}
	if wantsJSON(r) {
		if err != nil {
			writeJSON(w, statusOf(err), map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, actionResult{OK: true, Message: msg, VM: vm})
		return
	}
	if err != nil {
		setFlash(w, "error", err.Error())
	} else {
		setFlash(w, "ok", msg)
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// actionResult is the JSON answer to a quick action.
type actionResult struct {
	OK      bool    `json:"ok"`
	Message string  `json:"message"`
	VM      *rpc.VM `json:"vm,omitempty"`
}
