// Package portfwd publishes a guest's ports on host addresses: it parses publish specs and relays TCP connections and UDP datagrams in userspace, bounded in connections, sessions and buffers.
package portfwd

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocols a spec may name.
const (
	TCP = "tcp"
	UDP = "udp"
)

// MaxPerVM bounds how many ports one VM may publish.
const MaxPerVM = 32

// DefaultHostIP is the host address a spec without one listens on: the
// host's loopback, reachable only from the host itself.
var DefaultHostIP = netip.MustParseAddr("127.0.0.1")

// Spec is one published port: connections to HostIP:HostPort on the host
// (datagrams, for UDP) are relayed to GuestPort on the guest's address.
type Spec struct {
	Proto     string
	HostIP    netip.Addr
	HostPort  uint16
	GuestPort uint16
}

// String is the spec in the form ParseSpec reads, with every part given:
// 127.0.0.1:8080:80/tcp, [::1]:53:53/udp.
func (s Spec) String() string {
	return s.Host() + ":" + strconv.Itoa(int(s.GuestPort)) + "/" + s.Proto
}

// Host is the host side, HOSTIP:HOSTPORT (IPv6 in brackets).
func (s Spec) Host() string {
	return netip.AddrPortFrom(s.HostIP, s.HostPort).String()
}

// Validate checks a spec that did not come from ParseSpec (the API's).
func (s Spec) Validate() error {
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("publishing a port: protocol %q is not tcp or udp", truncate(s.Proto, 16))
	}
	if err := checkHostIP(s.HostIP); err != nil {
		return fmt.Errorf("publishing port %d: %w", s.HostPort, err)
	}
	if s.HostPort == 0 || s.GuestPort == 0 {
		return fmt.Errorf("publishing %s: ports are 1 to 65535", s)
	}
	return nil
}

// Overlaps reports whether s and o cannot both listen: the same protocol
// and host port on the same address, or on any address when either is the
// unspecified one (0.0.0.0 or ::, which listen on every address).
func (s Spec) Overlaps(o Spec) bool {
	if s.Proto != o.Proto || s.HostPort != o.HostPort {
		return false
	}
	return s.HostIP == o.HostIP || s.HostIP.IsUnspecified() || o.HostIP.IsUnspecified()
}

// ParseSpec reads [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]. HOSTIP defaults to
// 127.0.0.1 and the protocol to tcp; an IPv6 HOSTIP goes in brackets
// ([::1]:8080:80).
func ParseSpec(s string) (Spec, error) {
	sp := Spec{Proto: TCP, HostIP: DefaultHostIP}
	bad := func(why string) (Spec, error) {
		return Spec{}, fmt.Errorf("invalid port spec %q: %s: write [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp], for example 8080:80 or 0.0.0.0:5353:53/udp", truncate(s, 64), why)
	}
	if len(s) > 64 {
		return bad("too long")
	}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		sp.Proto = rest[i+1:]
		rest = rest[:i]
		if sp.Proto != TCP && sp.Proto != UDP {
			return bad(fmt.Sprintf("protocol %q is not tcp or udp", sp.Proto))
		}
	}
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 || end+1 >= len(rest) || rest[end+1] != ':' {
			return bad("an IPv6 host address needs its closing bracket and a port after it")
		}
		ip, err := parseHostIP(rest[1:end])
		if err != nil {
			return bad(err.Error())
		}
		if !ip.Is6() || ip.Is4In6() {
			return bad("the host address in brackets is not an IPv6 address")
		}
		sp.HostIP = ip
		rest = rest[end+2:]
		hp, gp, ok := strings.Cut(rest, ":")
		if !ok {
			return bad("it needs both a host port and a guest port")
		}
		return finish(sp, hp, gp, bad)
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 2:
		return finish(sp, parts[0], parts[1], bad)
	case 3:
		ip, err := parseHostIP(parts[0])
		if err != nil {
			return bad(err.Error())
		}
		if ip.Is6() {
			return bad("an IPv6 host address goes in brackets, as in [::1]:8080:80")
		}
		sp.HostIP = ip
		return finish(sp, parts[1], parts[2], bad)
	case 1:
		return bad("it needs both a host port and a guest port")
	default:
		return bad("an IPv6 host address goes in brackets, as in [::1]:8080:80")
	}
}

func finish(sp Spec, hp, gp string, bad func(string) (Spec, error)) (Spec, error) {
	var err error
	if sp.HostPort, err = parsePort(hp); err != nil {
		return bad("host port " + err.Error())
	}
	if sp.GuestPort, err = parsePort(gp); err != nil {
		return bad("guest port " + err.Error())
	}
	return sp, nil
}

// parsePort reads a decimal port 1-65535, digits only.
func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("is missing")
	}
	if len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a number from 1 to 65535", s)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%d is not from 1 to 65535", n)
	}
	return uint16(n), nil
}

// parseHostIP reads a host address a port may listen on.
func parseHostIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("host address %q is not an IP address", truncate(s, 40))
	}
	return ip, checkHostIP(ip)
}

// checkHostIP refuses addresses nothing can listen on for a forward.
func checkHostIP(ip netip.Addr) error {
	switch {
	case !ip.IsValid():
		return errors.New("no host address")
	case ip.Zone() != "":
		return fmt.Errorf("host address %s has a zone: give a global or loopback address", ip)
	case ip.Is4In6():
		return fmt.Errorf("host address %s is an IPv4-mapped IPv6 address: write it as %s", ip, ip.Unmap())
	case ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("host address %s is not a unicast address", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("host address %s is link-local: give a global or loopback address", ip)
	}
	return nil
}

// Check validates specs as one VM's: each valid, at most MaxPerVM, none
// overlapping another.
func Check(specs []Spec) error {
	if len(specs) > MaxPerVM {
		return fmt.Errorf("publishing %d ports: a VM publishes at most %d", len(specs), MaxPerVM)
	}
	for i, s := range specs {
		if err := s.Validate(); err != nil {
			return err
		}
		for _, o := range specs[:i] {
			if s.Overlaps(o) {
				return fmt.Errorf("publishing %s and %s: both take host port %d/%s: give each its own host port", o, s, s.HostPort, s.Proto)
			}
		}
	}
	return nil
}

// Selector names published ports to remove: a host port, its protocol,
// and optionally its host address (invalid: any).
type Selector struct {
	Proto    string
	HostIP   netip.Addr
	HostPort uint16
}

// Matches reports whether the selector names s.
func (sel Selector) Matches(s Spec) bool {
	return sel.Proto == s.Proto && sel.HostPort == s.HostPort && (!sel.HostIP.IsValid() || sel.HostIP == s.HostIP)
}

func (sel Selector) String() string {
	if sel.HostIP.IsValid() {
		return netip.AddrPortFrom(sel.HostIP, sel.HostPort).String() + "/" + sel.Proto
	}
	return strconv.Itoa(int(sel.HostPort)) + "/" + sel.Proto
}

// ParseSelector reads [HOSTIP:]HOSTPORT[/tcp|/udp], or a whole spec (its
// guest port is ignored), naming ports to remove.
func ParseSelector(s string) (Selector, error) {
	if sp, err := ParseSpec(s); err == nil {
		explicit := strings.Count(strings.SplitN(s, "/", 2)[0], ":") == 2 || strings.HasPrefix(s, "[")
		sel := Selector{Proto: sp.Proto, HostPort: sp.HostPort}
		if explicit {
			sel.HostIP = sp.HostIP
		}
		return sel, nil
	}
	bad := func(why string) (Selector, error) {
		return Selector{}, fmt.Errorf("invalid published port %q: %s: write [HOSTIP:]HOSTPORT[/tcp|/udp], for example 8080 or 127.0.0.1:5353/udp", truncate(s, 64), why)
	}
	if len(s) > 64 {
		return bad("too long")
	}
	sel := Selector{Proto: TCP}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		sel.Proto = rest[i+1:]
		rest = rest[:i]
		if sel.Proto != TCP && sel.Proto != UDP {
			return bad(fmt.Sprintf("protocol %q is not tcp or udp", sel.Proto))
		}
	}
	port := rest
	if strings.ContainsRune(rest, ':') {
		ap, err := netip.ParseAddrPort(rest)
		if err != nil {
			return bad("it is not HOSTIP:HOSTPORT (an IPv6 address goes in brackets)")
		}
		if err := checkHostIP(ap.Addr()); err != nil {
			return bad(err.Error())
		}
		sel.HostIP = ap.Addr()
		port = strconv.Itoa(int(ap.Port()))
	}
	p, err := parsePort(port)
	if err != nil {
		return bad("host port " + err.Error())
	}
	sel.HostPort = p
	return sel, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
