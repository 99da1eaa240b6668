package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// errNoUpstream means forwarding has nowhere to go.
var errNoUpstream = errors.New("no upstream resolver configured")

// forwarder relays queries to the upstream resolvers, never to ourselves.
type forwarder struct {
	self    []netip.AddrPort
	timeout time.Duration
	log     *slog.Logger

	static  []netip.AddrPort // Used when dynamic is false.
	dynamic bool             // Re-read the resolv.conf file when it changes.

	mu     sync.Mutex
	path   string
	mtime  time.Time
	cached []netip.AddrPort
}

func newForwarder(upstreams []string, bound []string, timeout time.Duration, log *slog.Logger) *forwarder {
	f := &forwarder{timeout: timeout, log: log, dynamic: upstreams == nil}
	for _, b := range bound {
		if ap, err := netip.ParseAddrPort(b); err == nil {
			f.self = append(f.self, unmapPort(ap))
		}
	}
	if !f.dynamic {
		f.static = f.usable(upstreams)
	}
	return f
}

// upstreams returns the current upstream list.
func (f *forwarder) upstreams() []netip.AddrPort {
	if !f.dynamic {
		return f.static
	}
	path := defaultResolvConf()
	var mtime time.Time
	if fi, err := os.Stat(path); err == nil {
		mtime = fi.ModTime()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if path == f.path && mtime.Equal(f.mtime) && f.cached != nil {
		return f.cached
	}
	ups, err := UpstreamsFromResolvConf(path)
	if err != nil {
		f.log.Warn("reading upstream resolvers", "err", err)
	}
	f.path, f.mtime, f.cached = path, mtime, f.usable(ups)
	if f.cached == nil {
		f.cached = []netip.AddrPort{} // Cache "none" too.
	}
	return f.cached
}

// usable parses upstreams and drops bad ones and our own listen addresses.
func (f *forwarder) usable(upstreams []string) []netip.AddrPort {
	var out []netip.AddrPort
	var local []netip.Addr
	localDone := false
	for _, u := range upstreams {
		ap, err := parseUpstream(u)
		if err != nil {
			f.log.Warn("ignoring upstream resolver", "err", err)
			continue
		}
		if !localDone {
			local, localDone = localAddrs(), true
		}
		if f.isSelf(ap, local) {
			f.log.Warn("ignoring upstream resolver: it is one of our listen addresses (forwarding loop)", "upstream", u)
			continue
		}
		if !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	return out
}

// isSelf reports whether sending to up would reach one of our listeners.
func (f *forwarder) isSelf(up netip.AddrPort, local []netip.Addr) bool {
	ip := up.Addr()
	for _, b := range f.self {
		if b.Port() != up.Port() {
			continue
		}
		if b.Addr() == ip || (ip.IsUnspecified() && (b.Addr().IsLoopback() || b.Addr().IsUnspecified())) {
			return true
		}
		if b.Addr().IsUnspecified() && (ip.IsLoopback() || slices.Contains(local, ip)) {
			return true
		}
	}
	return false
}

// localAddrs lists the host's interface addresses.
func localAddrs() []netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// parseUpstream accepts "ip:port" or a bare IP (port 53).
func parseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return unmapPort(ap), nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("parsing upstream %q: want ip:port", s)
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (f *forwarder) enabled() bool { return len(f.upstreams()) > 0 }

func (f *forwarder) describe() []string {
	var out []string
	for _, u := range f.upstreams() {
		out = append(out, u.String())
	}
	if f.dynamic {
		out = append(out, "(from "+defaultResolvConf()+")")
	}
	return out
}

// exchange asks each upstream in turn over UDP, retrying over TCP when the
// answer is truncated. SERVFAIL and REFUSED answers move on to the next
// upstream but are returned when no upstream does better; a message that is
// not a response to req's question moves on too, and is never returned.
func (f *forwarder) exchange(req *mdns.Msg) (*mdns.Msg, error) {
	ups := f.upstreams()
	if len(ups) == 0 {
		return nil, errNoUpstream
	}
	var last *mdns.Msg
	var errs []error
	for _, up := range ups {
		addr := up.String()
		udp := &mdns.Client{Net: "udp", Timeout: f.timeout}
		r, _, err := udp.Exchange(req, addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("asking upstream %s: %w", addr, err))
			continue
		}
		if r.Truncated {
			tcp := &mdns.Client{Net: "tcp", Timeout: f.timeout}
			if rt, _, err := tcp.Exchange(req, addr); err == nil {
				r = rt
			} else {
				errs = append(errs, fmt.Errorf("asking upstream %s over tcp: %w", addr, err))
			}
		}
		if !answers(r, req) {
			errs = append(errs, fmt.Errorf("asking upstream %s: its answer is not a response to the question asked", addr))
			continue
		}
		if r.Rcode == mdns.RcodeServerFailure || r.Rcode == mdns.RcodeRefused {
			last = r
			continue
		}
		return r, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, errors.Join(errs...)
}

// answers reports whether r is a response to req's one question.
func answers(r, req *mdns.Msg) bool {
	if !r.Response || len(r.Question) != 1 || len(req.Question) != 1 {
		return false
	}
	a, q := r.Question[0], req.Question[0]
	return strings.EqualFold(a.Name, q.Name) && a.Qtype == q.Qtype && a.Qclass == q.Qclass
}
