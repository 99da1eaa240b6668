// Package egress decides where each VM's outbound traffic may go and enforces it with banger's own nftables table and DNS server.
package egress

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Mode is how a policy treats destinations that no list names.
type Mode string

const (
	// ModeDefault reaches the public internet but not the host, private,
	// CGNAT, link-local (cloud metadata), loopback, multicast and reserved
	// ranges, unless Allow names them (addresses only). It is what every
	// NAT guest gets unless told otherwise; the zero Mode means it too.
	ModeDefault Mode = "default"
	// ModeAllow reaches only what Allow names, minus what Deny names.
	// Names are allowed at the addresses banger's DNS answered for them.
	ModeAllow Mode = "allow"
	// ModeDeny is ModeDefault minus what Deny names: denied names get
	// NXDOMAIN and the addresses they resolve to are dropped.
	ModeDeny Mode = "deny"
	// ModeOpen filters nothing: a NAT guest reaches whatever the host
	// reaches, as before banger had egress policies.
	ModeOpen Mode = "open"
)

// Limits of a policy.
const (
	// MaxEntries is the most entries of one list.
	MaxEntries = 256
	// MaxEntryLen is the longest entry, in bytes, as written.
	MaxEntryLen = 300
	// MaxListLen is the longest comma-separated list, in bytes.
	MaxListLen = 64 << 10
	maxNameLen = 253
)

// Proto is the transport protocol of an entry with a port.
type Proto uint8

const (
	// ProtoAny is TCP and UDP (and, without a port, every protocol).
	ProtoAny Proto = iota
	// ProtoTCP is TCP only.
	ProtoTCP
	// ProtoUDP is UDP only.
	ProtoUDP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return ""
}

// Entry is one item of an allow or deny list: a domain or an IPv4
// network, with an optional port and protocol.
type Entry struct {
	// Domain is a name ("github.com", matching only itself) or a wildcard
	// ("*.npmjs.org", matching every name below npmjs.org but not
	// npmjs.org itself), in lower case without the trailing dot. It is
	// empty for an address entry.
	Domain string
	// Prefix is the IPv4 network of an address entry (a bare address is
	// a /32); invalid for a domain entry.
	Prefix netip.Prefix
	// Port limits the entry to one destination port; 0 is every port.
	Port uint16
	// Proto limits an entry with a port to TCP or UDP; ProtoAny is both.
	Proto Proto
}

// IsDomain reports whether e names a domain rather than addresses.
func (e Entry) IsDomain() bool { return e.Domain != "" }

// String is the entry in the form ParseEntry reads back.
func (e Entry) String() string {
	var b strings.Builder
	if e.IsDomain() {
		b.WriteString(e.Domain)
	} else if e.Prefix.Bits() == 32 {
		b.WriteString(e.Prefix.Addr().String())
	} else {
		b.WriteString(e.Prefix.String())
	}
	if e.Port != 0 {
		b.WriteString(":" + strconv.Itoa(int(e.Port)))
		if e.Proto != ProtoAny {
			b.WriteString("/" + e.Proto.String())
		}
	}
	return b.String()
}

// MarshalText implements encoding.TextMarshaler.
func (e Entry) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseEntry.
func (e *Entry) UnmarshalText(b []byte) error {
	v, err := ParseEntry(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// MatchesName reports whether a domain entry covers name (lower case,
// with or without the trailing dot).
func (e Entry) MatchesName(name string) bool {
	if !e.IsDomain() {
		return false
	}
	name = strings.TrimSuffix(name, ".")
	if base, ok := strings.CutPrefix(e.Domain, "*."); ok {
		return strings.HasSuffix(name, "."+base) && len(name) > len(base)+1
	}
	return name == e.Domain
}

// ParseEntry parses one list entry:
//
//	github.com  *.npmjs.org  203.0.113.7  10.1.0.0/16
//	github.com:443  10.1.0.0/16:5432/tcp  192.0.2.53:53/udp
//
// A domain is matched case-insensitively without its trailing dot. Only
// IPv4 networks are accepted, written with their host bits clear.
func ParseEntry(s string) (Entry, error) {
	in := s
	s = strings.TrimSpace(s)
	fail := func(format string, a ...any) (Entry, error) {
		return Entry{}, fmt.Errorf("egress entry %q: %s", in, fmt.Sprintf(format, a...))
	}
	if s == "" {
		return fail("empty: write a domain, an IPv4 address or network, each optionally with :port")
	}
	if len(s) > MaxEntryLen {
		return fail("longer than %d bytes", MaxEntryLen)
	}
	var e Entry
	lower := strings.ToLower(s)
	for _, p := range []Proto{ProtoTCP, ProtoUDP} {
		if rest, ok := strings.CutSuffix(lower, "/"+p.String()); ok {
			e.Proto, s = p, s[:len(rest)]
			break
		}
	}
	host := s
	if strings.Count(s, ":") > 1 || strings.Contains(s, "[") {
		return fail("IPv6 is not supported: guests reach the outside over IPv4 only")
	}
	if h, port, ok := strings.Cut(s, ":"); ok {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 || port[0] == '+' || port[0] == '0' {
			return fail("port %q is not a number from 1 to 65535", port)
		}
		host, e.Port = h, uint16(n)
	}
	if e.Proto != ProtoAny && e.Port == 0 {
		return fail("a protocol needs a port: write HOST:PORT/%s", e.Proto)
	}
	switch {
	case host == "":
		return fail("no domain or address before the port")
	case strings.Contains(host, "/"):
		if addr, _, _ := strings.Cut(host, "/"); !isAddrLike(addr) {
			return fail("a '/' goes in a network (10.1.0.0/16) or after a port (HOST:443/tcp)")
		}
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return fail("not an IPv4 network: write it like 10.1.0.0/16")
		}
		if !p.Addr().Is4() {
			return fail("IPv6 is not supported: guests reach the outside over IPv4 only")
		}
		if p.Masked() != p {
			return fail("host bits are set: write %s", p.Masked())
		}
		e.Prefix = p
	case isAddrLike(host):
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is4() {
			return fail("not an IPv4 address")
		}
		e.Prefix = netip.PrefixFrom(a, 32)
	default:
		d, err := parseDomain(host)
		if err != nil {
			return fail("%v", err)
		}
		e.Domain = d
	}
	return e, nil
}

// isAddrLike reports whether s is made of digits and dots only, so it is
// meant as an address and never read as a domain.
func isAddrLike(s string) bool {
	return strings.Trim(s, "0123456789.") == ""
}

// parseDomain checks and normalizes a domain or a "*." wildcard.
func parseDomain(s string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(s), ".")
	base, wild := strings.CutPrefix(d, "*.")
	if strings.Contains(base, "*") {
		return "", errors.New("a wildcard must be the whole first label, as in *.example.com")
	}
	if len(base) > maxNameLen {
		return "", fmt.Errorf("a domain is at most %d bytes", maxNameLen)
	}
	labels := strings.Split(base, ".")
	for _, l := range labels {
		switch {
		case l == "":
			return "", errors.New("empty label: check the dots")
		case len(l) > 63:
			return "", fmt.Errorf("label %q is longer than 63 bytes", l)
		case l[0] == '-' || l[len(l)-1] == '-':
			return "", fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("label %q has %q: use letters, digits, '-' and '_' (write other names in punycode, xn--)", l, c)
			}
		}
	}
	if len(labels) < 2 {
		if wild {
			return "", fmt.Errorf("*.%s covers a whole top-level domain: name the domains below it", base)
		}
		return "", fmt.Errorf("%q is not a fully qualified domain: write it with its parent domain, like %s.example.com", base, base)
	}
	if isAddrLike(labels[len(labels)-1]) {
		return "", errors.New("not a domain: its last label is a number")
	}
	return d, nil
}

// ParseList parses a comma-separated list of entries (an empty list is
// empty). Entries are normalized and duplicates dropped, keeping the
// first; an error names the bad item and its position.
func ParseList(s string) ([]Entry, error) {
	if len(s) > MaxListLen {
		return nil, fmt.Errorf("egress list is longer than %d bytes: put it in a policy file", MaxListLen)
	}
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	var out []Entry
	for i, item := range items {
		if strings.TrimSpace(item) == "" {
			return nil, fmt.Errorf("egress list: item %d is empty: remove the extra comma", i+1)
		}
		e, err := ParseEntry(item)
		if err != nil {
			return nil, fmt.Errorf("egress list: item %d: %w", i+1, err)
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
		if len(out) > MaxEntries {
			return nil, fmt.Errorf("egress list has more than %d entries: use networks or wildcards", MaxEntries)
		}
	}
	return out, nil
}

// FormatList is the inverse of ParseList.
func FormatList(es []Entry) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}

// Policy is one VM's egress policy. The zero Policy is ModeDefault.
type Policy struct {
	Mode  Mode    `json:"mode"`
	Allow []Entry `json:"allow,omitempty"`
	Deny  []Entry `json:"deny,omitempty"`
}

// Effective is the policy's mode, with the zero Mode read as ModeDefault.
func (p Policy) Effective() Mode {
	if p.Mode == "" {
		return ModeDefault
	}
	return p.Mode
}

// Validate checks that the lists fit the mode:
//   - open has no lists;
//   - default has no deny list (that is deny mode);
//   - default and deny allow only addresses, which open the ranges that
//     the default closes (leaving a name off the deny list allows it);
//   - allow needs an allow list (an empty one allows nothing).
//
// Lists must also be within MaxEntries, without duplicates.
func (p Policy) Validate() error {
	for what, l := range map[string][]Entry{"allow": p.Allow, "deny": p.Deny} {
		if len(l) > MaxEntries {
			return fmt.Errorf("egress policy: the %s list has more than %d entries: use networks or wildcards", what, MaxEntries)
		}
		for i, e := range l {
			if (e.IsDomain() == e.Prefix.IsValid()) || (e.Prefix.IsValid() && (!e.Prefix.Addr().Is4() || e.Prefix.Masked() != e.Prefix)) ||
				(e.Proto != ProtoAny && e.Port == 0) || e.Proto > ProtoUDP {
				return fmt.Errorf("egress policy: %s entry %d (%s) is malformed", what, i+1, e)
			}
			if e.IsDomain() {
				if d, err := parseDomain(e.Domain); err != nil || d != e.Domain {
					return fmt.Errorf("egress policy: %s entry %d (%s) is malformed", what, i+1, e)
				}
			}
			if slices.Contains(l[:i], e) {
				return fmt.Errorf("egress policy: %s entry %s is listed twice", what, e)
			}
		}
	}
	switch p.Effective() {
	case ModeOpen:
		if len(p.Allow)+len(p.Deny) > 0 {
			return errors.New("egress policy: open filters nothing and takes no lists: drop the lists or choose allow or deny")
		}
	case ModeDefault, ModeDeny:
		if p.Effective() == ModeDefault && len(p.Deny) > 0 {
			return errors.New("egress policy: default has no deny list: use mode deny")
		}
		for _, e := range p.Allow {
			if e.IsDomain() {
				return fmt.Errorf("egress policy: %s allows every public name already; its allow list takes only addresses (to open private ranges), not %s", p.Effective(), e)
			}
		}
	case ModeAllow:
	default:
		return fmt.Errorf("egress policy: mode %q is not default, allow, deny or open", p.Mode)
	}
	return nil
}

// String describes the policy in one line, as `vm show` prints it:
// "default", "default opening 10.1.0.0/16", "allow github.com,*.github.com",
// "allow *.github.com except gist.github.com", "deny evil.example", "open".
func (p Policy) String() string {
	list := func(es []Entry) string {
		if len(es) == 0 {
			return "nothing"
		}
		return FormatList(es)
	}
	switch m := p.Effective(); m {
	case ModeAllow:
		s := "allow " + list(p.Allow)
		if len(p.Deny) > 0 {
			s += " except " + list(p.Deny)
		}
		return s
	case ModeDeny, ModeDefault:
		s := string(m)
		if m == ModeDeny {
			s += " " + list(p.Deny)
		}
		if len(p.Allow) > 0 {
			s += " opening " + list(p.Allow)
		}
		return s
	default:
		return string(m)
	}
}

// UnmarshalJSON reads a policy and validates it.
func (p *Policy) UnmarshalJSON(b []byte) error {
	type plain Policy
	var v plain
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("egress policy: %w", err)
	}
	if err := Policy(v).Validate(); err != nil {
		return err
	}
	*p = Policy(v)
	return nil
}

// Open is the policy that filters nothing.
func Open() Policy { return Policy{Mode: ModeOpen} }

// FromFlags builds a policy from the CLI's lists: allow alone is ModeAllow,
// deny alone ModeDeny, neither ModeDefault. Giving both is ModeAllow with
// the deny list cut out of it. allowSet says --egress-allow was given
// (an empty allow list allows nothing).
func FromFlags(allow string, allowSet bool, deny string, denySet bool) (Policy, error) {
	a, err := ParseList(allow)
	if err != nil {
		return Policy{}, fmt.Errorf("--egress-allow: %w", err)
	}
	d, err := ParseList(deny)
	if err != nil {
		return Policy{}, fmt.Errorf("--egress-deny: %w", err)
	}
	p := Policy{Mode: ModeDefault, Allow: a, Deny: d}
	switch {
	case allowSet:
		p.Mode = ModeAllow
	case denySet:
		p.Mode = ModeDeny
	}
	return p, p.Validate()
}
