package egress

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Closed are the ranges that every filtered guest is kept from (unless its
// allow list names them by address): "this network", RFC 1918 private
// networks, CGNAT, loopback, link-local (cloud metadata at
// 169.254.169.254), multicast and the reserved 240/4 with the broadcast
// address.
var Closed = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// Reason says why a packet or a name was refused.
type Reason uint8

const (
	// ReasonDenied: the deny list names it.
	ReasonDenied Reason = 1 + iota
	// ReasonResolver: DNS or DoT (ports 53 and 853) to a resolver other
	// than banger's.
	ReasonResolver
	// ReasonPrivate: a Closed range the allow list does not name.
	ReasonPrivate
	// ReasonUnlisted: not on the allow list (for an address of an allowed
	// name: the guest did not resolve it through banger's DNS).
	ReasonUnlisted
	// ReasonHost: the host's own addresses (banger's DNS excepted).
	ReasonHost
	// ReasonSpoofed: a frame from the VM's TAP device that is not IPv4
	// from its own address or ARP for it.
	ReasonSpoofed
)

// Reasons lists every Reason, in counter order.
var Reasons = []Reason{ReasonDenied, ReasonResolver, ReasonPrivate, ReasonUnlisted, ReasonHost, ReasonSpoofed}

// ipReasons have counters in the ip table (ReasonSpoofed's is in the
// bridge table).
var ipReasons = Reasons[:len(Reasons)-1]

func (r Reason) String() string {
	switch r {
	case ReasonDenied:
		return "denied"
	case ReasonResolver:
		return "resolver"
	case ReasonPrivate:
		return "private"
	case ReasonUnlisted:
		return "unlisted"
	case ReasonHost:
		return "host"
	case ReasonSpoofed:
		return "spoofed"
	}
	return "reason" + strconv.Itoa(int(r))
}

// MarshalText implements encoding.TextMarshaler.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// The ct mark bits that carry a VM's policy generation: a connection is let
// through without a second look only while the mark says it was accepted
// under the VM's current policy. The low 16 bits stay as they are.
const (
	markMask = 0xffff0000
	markKeep = 0x0000ffff
)

// Sizes of a VM's sets in the kernel. The daemon keeps the learned sets
// below maxLearned itself, evicting what expires first; the kernel's
// limit is twice that, so a transaction never meets a full set.
const (
	maxLearned  = 4096
	setSize     = 2 * maxLearned
	seenSize    = 256
	seenTimeout = time.Hour
	commentTag  = "banger:egress"
	jumpTag     = "vm:"
	layoutVer   = "1"
	closedSet   = "closed"
	chainFwd    = "forward"
	chainIn     = "input"
	chainPrio   = "filter - 10"
	chainPrioN  = -10
	chainPre    = "prerouting" // the bridge table's base chain
	// bridgePrioN is chainPrio in the bridge family, where filter is -200.
	bridgePrioN = -210
)

// objects are the nftables objects of one VM, all named v_<id>_*.
type objects struct {
	id                       string
	fwd, in, refuse          string
	anet, aport, adns, adnsp string // allowed: static networks, with ports, learned, learned with ports
	dnet, dport, ddns, ddnsp string // denied, likewise
	seen                     string // recently refused destinations
	port                     string // the bridge table's chain for the VM's TAP device
}

func objectsOf(id string) objects {
	p := "v_" + id + "_"
	return objects{
		id: id, fwd: p + "fwd", in: p + "in", refuse: p + "refuse",
		anet: p + "anet", aport: p + "aport", adns: p + "adns", adnsp: p + "adnsp",
		dnet: p + "dnet", dport: p + "dport", ddns: p + "ddns", ddnsp: p + "ddnsp",
		seen: p + "seen", port: p + "port",
	}
}

func (o objects) counter(r Reason) string { return "v_" + o.id + "_" + r.String() }

func (o objects) chains() []string { return []string{o.fwd, o.in, o.refuse} }

const (
	typeAddr = "ipv4_addr"
	typePort = "ipv4_addr . inet_proto . inet_service"
	typeSeen = "ipv4_addr . inet_proto . inet_service . mark"
	flagsNet = "flags interval;"
)

// flagsLearn are the flags of a learned set.
var flagsLearn = fmt.Sprintf("flags timeout; size %d;", setSize)

// setDefs are a VM's sets with their definitions, in creation order.
func (o objects) setDefs() [][2]string {
	return [][2]string{
		{o.anet, "type " + typeAddr + "; " + flagsNet},
		{o.aport, "type " + typePort + "; " + flagsNet},
		{o.adns, "type " + typeAddr + "; " + flagsLearn},
		{o.adnsp, "type " + typePort + "; " + flagsLearn},
		{o.dnet, "type " + typeAddr + "; " + flagsNet},
		{o.dport, "type " + typePort + "; " + flagsNet},
		{o.ddns, "type " + typeAddr + "; " + flagsLearn},
		{o.ddnsp, "type " + typePort + "; " + flagsLearn},
		{o.seen, fmt.Sprintf("type %s; flags dynamic,timeout; timeout %ds; size %d;", typeSeen, int(seenTimeout/time.Second), seenSize)},
	}
}

// idRE is what a VM id may be: it becomes part of nft object names.
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// nameRE is a valid table name.
var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,63}$`)

// layout is what every rule of one Manager shares.
type layout struct {
	table   string
	bridge  string
	gateway netip.Addr
	dnsPort uint16 // banger's DNS port on the gateway besides 53 (0: none)
}

func (l layout) t() string { return "ip " + l.table }

// b is the bridge table of the same name, which keeps a filtered guest to
// its own address (see Manager).
func (l layout) b() string { return "bridge " + l.table }

// baseScript creates the table, its base chains and the closed set when
// missing, and sets the closed set's elements; it never touches a VM.
func (l layout) baseScript() []string {
	t := l.t()
	closed := make([]string, len(Closed))
	for i, p := range Closed {
		closed[i] = p.String()
	}
	return []string{
		"add table " + t,
		fmt.Sprintf("add chain %s %s { type filter hook forward priority %s; policy accept; }", t, chainFwd, chainPrio),
		fmt.Sprintf("add chain %s %s { type filter hook input priority %s; policy accept; }", t, chainIn, chainPrio),
		fmt.Sprintf("add set %s %s { type %s; %s }", t, closedSet, typeAddr, flagsNet),
		fmt.Sprintf("flush set %s %s", t, closedSet),
		fmt.Sprintf("add element %s %s { %s }", t, closedSet, strings.Join(closed, ", ")),
		"add table " + l.b(),
		fmt.Sprintf("add chain %s %s { type filter hook prerouting priority %s; policy accept; }", l.b(), chainPre, chainPrio),
	}
}

// spec is what one VM's rules are made from.
type spec struct {
	id     string
	ip     netip.Addr
	tap    string
	policy Policy
}

// markAccept accepts and stamps the connection with generation gen.
func markAccept(gen uint16) string {
	return fmt.Sprintf("ct mark set ct mark and 0x%08x or 0x%08x accept", markKeep, uint32(gen)<<16)
}

// fingerprint identifies the rules a VM gets from l and s and its policy's
// names (but not its generation or learned addresses), so that reconciling
// can keep a VM whose rules and names are still right.
func (l layout) fingerprint(s spec) string {
	h := sha256.New()
	fmt.Fprintln(h, layoutVer)
	for _, line := range l.rules(s, 0) {
		fmt.Fprintln(h, line)
	}
	for _, line := range l.staticElements(s) {
		fmt.Fprintln(h, line)
	}
	for _, line := range l.jumpRules(s) {
		fmt.Fprintln(h, line)
	}
	// The names, which no rule shows: a VM whose names changed must lose
	// the addresses learned for the old ones.
	fmt.Fprintln(h, s.policy.Effective(), FormatList(s.policy.Allow), FormatList(s.policy.Deny))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

var commentRE = regexp.MustCompile(`^` + commentTag + ` fp=([0-9a-f]{16}) gen=([0-9a-f]{4})$`)

func ruleComment(fp string, gen uint16) string {
	return fmt.Sprintf("%s fp=%s gen=%04x", commentTag, fp, gen)
}

// parseComment reads the fingerprint and generation from a VM chain's
// first rule comment.
func parseComment(c string) (fp string, gen uint16, ok bool) {
	m := commentRE.FindStringSubmatch(c)
	if m == nil {
		return "", 0, false
	}
	g, err := strconv.ParseUint(m[2], 16, 16)
	if err != nil {
		return "", 0, false
	}
	return m[1], uint16(g), true
}

// rules are a VM's rules in its own chains (not the jumps to them). With
// gen 0 they carry no comment: that form is what fingerprint hashes.
func (l layout) rules(s spec, gen uint16) []string {
	t, o := l.t(), objectsOf(s.id)
	acc := markAccept(gen)
	mode := s.policy.Effective()
	refuse := func(r Reason) string {
		return fmt.Sprintf("counter name %s meta mark set 0x%08x goto %s", o.counter(r), uint32(r), o.refuse)
	}
	first := "ct direction reply accept"
	if gen != 0 {
		first += fmt.Sprintf(" comment %q", ruleComment(l.fingerprint(s), gen))
	}
	established := fmt.Sprintf("ct state established,related ct mark and 0x%08x == 0x%08x accept", uint32(markMask), uint32(gen)<<16)
	port := "ip daddr . meta l4proto . th dport"
	r := []string{
		// A refused packet's meta mark carries the reason into the seen set;
		// the packet is dropped, so the mark goes nowhere. When the seen
		// set is full the update fails and the drop still follows.
		fmt.Sprintf("add rule %s %s meta l4proto { tcp, udp } update @%s { %s . meta mark }", t, o.refuse, o.seen, port),
		fmt.Sprintf("add rule %s %s drop", t, o.refuse),

		fmt.Sprintf("add rule %s %s %s", t, o.fwd, first),
		fmt.Sprintf("add rule %s %s %s", t, o.fwd, established),
		fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.fwd, o.dnet, refuse(ReasonDenied)),
		fmt.Sprintf("add rule %s %s %s @%s %s", t, o.fwd, port, o.dport, refuse(ReasonDenied)),
		fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.fwd, o.ddns, refuse(ReasonDenied)),
		fmt.Sprintf("add rule %s %s %s @%s %s", t, o.fwd, port, o.ddnsp, refuse(ReasonDenied)),
		fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.fwd, o.anet, acc),
		fmt.Sprintf("add rule %s %s %s @%s %s", t, o.fwd, port, o.aport, acc),
	}
	if mode == ModeAllow || mode == ModeDeny {
		r = append(r, fmt.Sprintf("add rule %s %s meta l4proto { tcp, udp } th dport { 53, 853 } %s", t, o.fwd, refuse(ReasonResolver)))
	}
	r = append(r, fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.fwd, closedSet, refuse(ReasonPrivate)))
	if mode == ModeAllow {
		r = append(r,
			fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.fwd, o.adns, acc),
			fmt.Sprintf("add rule %s %s %s @%s %s", t, o.fwd, port, o.adnsp, acc),
			fmt.Sprintf("add rule %s %s %s", t, o.fwd, refuse(ReasonUnlisted)))
	} else {
		r = append(r, fmt.Sprintf("add rule %s %s %s", t, o.fwd, acc))
	}

	// Packets to the host itself: answers to the host's own connections
	// (SSH, readiness checks) and banger's DNS pass, everything else only
	// when the allow list names the address.
	dnsPorts := "53"
	if l.dnsPort != 0 && l.dnsPort != 53 {
		dnsPorts = fmt.Sprintf("{ 53, %d }", l.dnsPort)
	}
	r = append(r,
		fmt.Sprintf("add rule %s %s ct direction reply accept", t, o.in),
		fmt.Sprintf("add rule %s %s %s", t, o.in, established),
		fmt.Sprintf("add rule %s %s ip daddr %s meta l4proto { tcp, udp } th dport %s %s", t, o.in, l.gateway, dnsPorts, acc),
		fmt.Sprintf("add rule %s %s ip daddr @%s %s", t, o.in, o.anet, acc),
		fmt.Sprintf("add rule %s %s %s @%s %s", t, o.in, port, o.aport, acc),
		// Broadcast and multicast that reach the host (mDNS, LLMNR) are
		// dropped without counting: they are a guest's chatter, not a
		// connection it tried.
		fmt.Sprintf("add rule %s %s fib daddr type { broadcast, multicast } drop", t, o.in),
		fmt.Sprintf("add rule %s %s %s", t, o.in, refuse(ReasonHost)))

	// Frames from the VM's TAP device: only IPv4 from its own address and
	// ARP for it. Anything else (another guest's address, which would take
	// that guest's policy; IPv6, which this table does not see and which
	// reaches the host's link-local addresses) is dropped.
	b := l.b()
	r = append(r,
		fmt.Sprintf("add rule %s %s ether type ip ip saddr %s return", b, o.port, s.ip),
		fmt.Sprintf("add rule %s %s ether type arp arp saddr ip %s return", b, o.port, s.ip),
		fmt.Sprintf("add rule %s %s counter name %s drop", b, o.port, o.counter(ReasonSpoofed)))
	return r
}

// jumpRules send the VM's packets to its chains: forwarded packets that
// leave the bridge (guest to guest traffic stays with guest isolation), and
// packets to the host.
func (l layout) jumpRules(s spec) []string {
	t, o := l.t(), objectsOf(s.id)
	c := strconv.Quote(jumpTag + s.id)
	return []string{
		fmt.Sprintf("add rule %s %s iifname %q oifname != %q ip saddr %s jump %s comment %s", t, chainFwd, l.bridge, l.bridge, s.ip, o.fwd, c),
		fmt.Sprintf("add rule %s %s iifname %q ip saddr %s jump %s comment %s", t, chainIn, l.bridge, s.ip, o.in, c),
		fmt.Sprintf("add rule %s %s iifname %q jump %s comment %s", l.b(), chainPre, s.tap, o.port, c),
	}
}

// staticElements fill the VM's sets of listed networks.
func (l layout) staticElements(s spec) []string {
	t, o := l.t(), objectsOf(s.id)
	var out []string
	add := func(set string, elems []string) {
		if len(elems) > 0 {
			out = append(out, fmt.Sprintf("add element %s %s { %s }", t, set, strings.Join(elems, ", ")))
		}
	}
	an, ap := netElements(s.policy.Allow)
	dn, dp := netElements(s.policy.Deny)
	add(o.anet, an)
	add(o.aport, ap)
	add(o.dnet, dn)
	add(o.dport, dp)
	return out
}

// netElements turns the address entries of a list into set elements, one
// set for any port and one for address . protocol . port, dropping networks
// that another one of the same set contains (nft refuses overlaps).
func netElements(es []Entry) (nets, ports []string) {
	var any []netip.Prefix
	type pp struct {
		proto string
		port  uint16
	}
	byPort := map[pp][]netip.Prefix{}
	var order []pp
	for _, e := range es {
		if e.IsDomain() {
			continue
		}
		if e.Port == 0 {
			any = append(any, e.Prefix)
			continue
		}
		for _, proto := range protos(e.Proto) {
			k := pp{proto, e.Port}
			if _, ok := byPort[k]; !ok {
				order = append(order, k)
			}
			byPort[k] = append(byPort[k], e.Prefix)
		}
	}
	for _, p := range outermost(any) {
		nets = append(nets, prefixString(p))
	}
	for _, k := range order {
		for _, p := range outermost(byPort[k]) {
			ports = append(ports, fmt.Sprintf("%s . %s . %d", prefixString(p), k.proto, k.port))
		}
	}
	return nets, ports
}

// prefixString writes a /32 as a bare address, as nft lists it.
func prefixString(p netip.Prefix) string {
	if p.Bits() == 32 {
		return p.Addr().String()
	}
	return p.String()
}

func protos(p Proto) []string {
	if p == ProtoAny {
		return []string{"tcp", "udp"}
	}
	return []string{p.String()}
}

// outermost drops prefixes contained in another, sorted by address.
func outermost(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if len(out) > 0 && out[len(out)-1].Bits() <= p.Bits() && out[len(out)-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// createScript makes or refills a VM's objects: new objects are added,
// existing ones (listed in have) flushed, except the counters and the seen
// set, which keep counting across policy changes. Old jump rules are
// deleted by handle and new ones added, so the change is one transaction.
func (l layout) createScript(s spec, gen uint16, have *vmListing, learned []string) []string {
	t, o := l.t(), objectsOf(s.id)
	var out []string
	if have != nil {
		out = append(out, l.deleteJumps(have)...)
	}
	for _, c := range o.chains() {
		out = append(out, fmt.Sprintf("add chain %s %s", t, c))
		if have != nil && have.chains[c] {
			out = append(out, fmt.Sprintf("flush chain %s %s", t, c))
		}
	}
	for _, d := range o.setDefs() {
		out = append(out, fmt.Sprintf("add set %s %s { %s }", t, d[0], d[1]))
		if have != nil && have.sets[d[0]] && d[0] != o.seen {
			out = append(out, fmt.Sprintf("flush set %s %s", t, d[0]))
		}
	}
	for _, r := range ipReasons {
		out = append(out, fmt.Sprintf("add counter %s %s", t, o.counter(r)))
	}
	out = append(out, fmt.Sprintf("add chain %s %s", l.b(), o.port))
	if have != nil && have.bchain {
		out = append(out, fmt.Sprintf("flush chain %s %s", l.b(), o.port))
	}
	out = append(out, fmt.Sprintf("add counter %s %s", l.b(), o.counter(ReasonSpoofed)))
	out = append(out, l.rules(s, gen)...)
	out = append(out, l.staticElements(s)...)
	out = append(out, learned...)
	return append(out, l.jumpRules(s)...)
}

func (l layout) deleteJumps(have *vmListing) []string {
	var out []string
	for _, j := range have.jumps {
		out = append(out, fmt.Sprintf("delete rule %s %s handle %d", l.t(), j.chain, j.handle))
	}
	for _, j := range have.bjumps {
		out = append(out, fmt.Sprintf("delete rule %s %s handle %d", l.b(), j.chain, j.handle))
	}
	return out
}

// removeScript deletes everything of a VM that the listing shows.
func (l layout) removeScript(have *vmListing) []string {
	t, o := l.t(), objectsOf(have.id)
	out := l.deleteJumps(have)
	if have.bchain {
		out = append(out, fmt.Sprintf("flush chain %s %s", l.b(), o.port), fmt.Sprintf("delete chain %s %s", l.b(), o.port))
	}
	if have.bcounter {
		out = append(out, fmt.Sprintf("delete counter %s %s", l.b(), o.counter(ReasonSpoofed)))
	}
	for _, c := range o.chains() {
		if have.chains[c] {
			out = append(out, fmt.Sprintf("flush chain %s %s", t, c))
		}
	}
	for _, c := range o.chains() {
		if have.chains[c] {
			out = append(out, fmt.Sprintf("delete chain %s %s", t, c))
		}
	}
	for _, name := range slices.Sorted(mapKeys(have.sets)) {
		out = append(out, fmt.Sprintf("delete set %s %s", t, name))
	}
	for _, name := range slices.Sorted(mapKeys(have.counters)) {
		out = append(out, fmt.Sprintf("delete counter %s %s", t, name))
	}
	return out
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// learnKey is one element of a learned set: an address, with a protocol
// and port for the sets of entries with ports.
type learnKey struct {
	deny  bool
	addr  netip.Addr
	proto string // "" for the sets without ports
	port  uint16
}

func (k learnKey) set(o objects) string {
	switch {
	case k.deny && k.proto != "":
		return o.ddnsp
	case k.deny:
		return o.ddns
	case k.proto != "":
		return o.adnsp
	}
	return o.adns
}

func (k learnKey) elem() string {
	if k.proto == "" {
		return k.addr.String()
	}
	return fmt.Sprintf("%s . %s . %d", k.addr, k.proto, k.port)
}

// learnScript adds keys with their timeouts. A key for which replace
// reports true may already be in its set: before Linux 6.10 "add" keeps an
// existing element's timeout, so such a key is added (a no-op when present),
// deleted and added again, which is valid whether or not the element
// exists. That costs a kernel grace period (about 12 ms against 2 ms here),
// so keys known to be new, or all keys on kernels where "add" updates the
// timeout, get the plain add. A nil replace means every key is new. Evicted
// keys are deleted the same safe way.
func learnScript(t string, o objects, add map[learnKey]time.Duration, replace func(learnKey) bool, evict []learnKey) []string {
	var out []string
	keys := slices.SortedFunc(func(yield func(learnKey) bool) {
		for k := range add {
			if !yield(k) {
				return
			}
		}
	}, compareKeys)
	for _, k := range keys {
		set, el := k.set(o), k.elem()
		secs := int(add[k] / time.Second)
		if replace != nil && replace(k) {
			out = append(out,
				fmt.Sprintf("add element %s %s { %s timeout %ds }", t, set, el, secs),
				fmt.Sprintf("delete element %s %s { %s }", t, set, el))
		}
		out = append(out, fmt.Sprintf("add element %s %s { %s timeout %ds }", t, set, el, secs))
	}
	for _, k := range evict {
		set, el := k.set(o), k.elem()
		out = append(out,
			fmt.Sprintf("add element %s %s { %s timeout 1s }", t, set, el),
			fmt.Sprintf("delete element %s %s { %s }", t, set, el))
	}
	return out
}

// probeScripts test whether re-adding an element updates its timeout: the
// first makes a probe set holding one element with a 10 s timeout, the
// second re-adds it with 1000 s; a listing then shows which won.
const probeSet = "probe"

func probeScripts(t string) (create, readd, remove []string) {
	create = []string{
		fmt.Sprintf("add set %s %s { type %s; flags timeout; size 1; }", t, probeSet, typeAddr),
		fmt.Sprintf("flush set %s %s", t, probeSet),
		fmt.Sprintf("add element %s %s { 0.0.0.1 timeout 10s }", t, probeSet),
	}
	readd = []string{fmt.Sprintf("add element %s %s { 0.0.0.1 timeout 1000s }", t, probeSet)}
	remove = []string{fmt.Sprintf("delete set %s %s", t, probeSet)}
	return
}

// probeUpdated reads the probe set's listing: true when the element's
// timeout is the re-added one.
func probeUpdated(out []byte) (bool, error) {
	var sl setListing
	if err := json.Unmarshal(out, &sl); err != nil {
		return false, fmt.Errorf("parsing nft json: %w", err)
	}
	for _, o := range sl.Nftables {
		if o.Set == nil || len(o.Set.Elem) != 1 {
			continue
		}
		var w struct {
			Elem struct {
				Timeout int `json:"timeout"`
			} `json:"elem"`
		}
		if json.Unmarshal(o.Set.Elem[0], &w) == nil {
			return w.Elem.Timeout == 1000, nil
		}
	}
	return false, errors.New("the probe set has no element")
}

func compareKeys(a, b learnKey) int {
	if a.deny != b.deny {
		if a.deny {
			return 1
		}
		return -1
	}
	if c := a.addr.Compare(b.addr); c != 0 {
		return c
	}
	if c := strings.Compare(a.proto, b.proto); c != 0 {
		return c
	}
	return int(a.port) - int(b.port)
}

// Reading the table back.

// listing is the part of `nft -j list table` output the manager reads.
type listing struct {
	Nftables []struct {
		Chain *struct {
			Name   string `json:"name"`
			Type   string `json:"type"`
			Hook   string `json:"hook"`
			Prio   *int   `json:"prio"`
			Policy string `json:"policy"`
		} `json:"chain"`
		Rule *struct {
			Chain   string `json:"chain"`
			Handle  int    `json:"handle"`
			Comment string `json:"comment"`
		} `json:"rule"`
		Set *struct {
			Name string            `json:"name"`
			Elem []json.RawMessage `json:"elem"`
		} `json:"set"`
		Counter *struct {
			Name    string `json:"name"`
			Packets uint64 `json:"packets"`
			Bytes   uint64 `json:"bytes"`
		} `json:"counter"`
	} `json:"nftables"`
}

// tableState is the table as listed, by VM.
type tableState struct {
	exists    bool
	baseOK    bool // base chains and closed set as baseScript makes them
	vms       map[string]*vmListing
	baseRules int  // rules in the base chains that are no VM's jump
	bexists   bool // the bridge table exists
}

type jump struct {
	chain  string
	handle int
}

// vmListing is what the table holds of one VM.
type vmListing struct {
	id       string
	jumps    []jump
	chains   map[string]bool
	sets     map[string]bool
	counters map[string]Counter
	fp       string
	gen      uint16
	elems    map[string][]element // learned and seen sets' elements
	bjumps   []jump               // in the bridge table
	bchain   bool
	bcounter bool
	spoofed  Counter
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// element is one element of a timeout set.
type element struct {
	addr    netip.Addr
	proto   string
	port    uint16
	mark    uint32
	expires time.Duration
}

var objRE = regexp.MustCompile(`^v_([A-Za-z0-9][A-Za-z0-9_.-]{0,63})_(fwd|in|refuse|anet|aport|adns|adnsp|dnet|dport|ddns|ddnsp|seen|denied|resolver|private|unlisted|host|port|spoofed)$`)

// parseListing reads `nft -j list table` output.
func parseListing(out []byte) (*tableState, error) {
	var l listing
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("parsing nft json: %w", err)
	}
	st := &tableState{exists: true, vms: map[string]*vmListing{}}
	vm := func(id string) *vmListing {
		v := st.vms[id]
		if v == nil {
			v = &vmListing{id: id, chains: map[string]bool{}, sets: map[string]bool{}, counters: map[string]Counter{}, elems: map[string][]element{}}
			st.vms[id] = v
		}
		return v
	}
	owner := func(name string) (string, bool) {
		m := objRE.FindStringSubmatch(name)
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	base := map[string]string{}
	closedOK := false
	firstRule := map[string]bool{}
	for _, o := range l.Nftables {
		switch {
		case o.Chain != nil:
			c := o.Chain
			if c.Name == chainFwd || c.Name == chainIn {
				prio := "none"
				if c.Prio != nil {
					prio = strconv.Itoa(*c.Prio)
				}
				base[c.Name] = c.Type + " " + c.Hook + " " + prio + " " + c.Policy
			} else if id, ok := owner(c.Name); ok {
				vm(id).chains[c.Name] = true
			}
		case o.Rule != nil:
			r := o.Rule
			if r.Chain == chainFwd || r.Chain == chainIn {
				if id, ok := strings.CutPrefix(r.Comment, jumpTag); ok && idRE.MatchString(id) {
					v := vm(id)
					v.jumps = append(v.jumps, jump{r.Chain, r.Handle})
				} else {
					st.baseRules++
				}
				continue
			}
			if id, ok := owner(r.Chain); ok && strings.HasSuffix(r.Chain, "_fwd") && !firstRule[r.Chain] {
				firstRule[r.Chain] = true
				if fp, gen, ok := parseComment(r.Comment); ok {
					v := vm(id)
					v.fp, v.gen = fp, gen
				}
			}
		case o.Set != nil:
			s := o.Set
			if s.Name == closedSet {
				closedOK = closedMatches(s.Elem)
				continue
			}
			if id, ok := owner(s.Name); ok {
				v := vm(id)
				v.sets[s.Name] = true
				for _, raw := range s.Elem {
					if e, ok := parseElement(raw); ok {
						v.elems[s.Name] = append(v.elems[s.Name], e)
					}
				}
			}
		case o.Counter != nil:
			if id, ok := owner(o.Counter.Name); ok {
				vm(id).counters[o.Counter.Name] = Counter{o.Counter.Packets, o.Counter.Bytes}
			}
		}
	}
	want := fmt.Sprintf("filter %%s %d accept", chainPrioN)
	st.baseOK = closedOK && base[chainFwd] == fmt.Sprintf(want, "forward") && base[chainIn] == fmt.Sprintf(want, "input") && len(base) == 2
	return st, nil
}

// parseBridgeListing adds `nft -j list table bridge` output to st and
// checks the bridge table's base chain.
func parseBridgeListing(out []byte, st *tableState) error {
	var l listing
	if err := json.Unmarshal(out, &l); err != nil {
		return fmt.Errorf("parsing nft json: %w", err)
	}
	st.bexists = true
	vm := func(id string) *vmListing {
		v := st.vms[id]
		if v == nil {
			v = &vmListing{id: id, chains: map[string]bool{}, sets: map[string]bool{}, counters: map[string]Counter{}, elems: map[string][]element{}}
			st.vms[id] = v
		}
		return v
	}
	var base []string
	for _, o := range l.Nftables {
		switch {
		case o.Chain != nil:
			c := o.Chain
			if c.Name == chainPre {
				prio := "none"
				if c.Prio != nil {
					prio = strconv.Itoa(*c.Prio)
				}
				base = append(base, c.Type+" "+c.Hook+" "+prio+" "+c.Policy)
			} else if m := objRE.FindStringSubmatch(c.Name); m != nil && m[2] == "port" {
				vm(m[1]).bchain = true
			} else {
				st.baseRules++ // not ours
			}
		case o.Rule != nil:
			if o.Rule.Chain != chainPre {
				continue
			}
			if id, ok := strings.CutPrefix(o.Rule.Comment, jumpTag); ok && idRE.MatchString(id) {
				v := vm(id)
				v.bjumps = append(v.bjumps, jump{o.Rule.Chain, o.Rule.Handle})
			} else {
				st.baseRules++
			}
		case o.Counter != nil:
			if m := objRE.FindStringSubmatch(o.Counter.Name); m != nil && m[2] == "spoofed" {
				v := vm(m[1])
				v.bcounter = true
				v.spoofed = Counter{o.Counter.Packets, o.Counter.Bytes}
			}
		}
	}
	if len(base) != 1 || base[0] != fmt.Sprintf("filter prerouting %d accept", bridgePrioN) {
		st.baseOK = false
	}
	return nil
}

// closedMatches reports whether the closed set holds exactly Closed.
func closedMatches(elems []json.RawMessage) bool {
	var got []netip.Prefix
	for _, raw := range elems {
		var p struct {
			Prefix struct {
				Addr string `json:"addr"`
				Len  int    `json:"len"`
			} `json:"prefix"`
		}
		if json.Unmarshal(raw, &p) != nil {
			return false
		}
		a, err := netip.ParseAddr(p.Prefix.Addr)
		if err != nil {
			return false
		}
		got = append(got, netip.PrefixFrom(a, p.Prefix.Len))
	}
	return slices.Equal(got, Closed)
}

// parseElement reads {"elem": {"val": V, "expires": N}} where V is an
// address or a concatenation of address, protocol, port and, in the seen
// set, a mark.
func parseElement(raw json.RawMessage) (element, bool) {
	var w struct {
		Elem *struct {
			Val     json.RawMessage `json:"val"`
			Expires int64           `json:"expires"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &w) != nil || w.Elem == nil {
		return element{}, false
	}
	e := element{expires: time.Duration(w.Elem.Expires) * time.Second}
	var s string
	if json.Unmarshal(w.Elem.Val, &s) == nil {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return element{}, false
		}
		e.addr = a
		return e, true
	}
	var c struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if json.Unmarshal(w.Elem.Val, &c) != nil || len(c.Concat) < 3 || len(c.Concat) > 4 {
		return element{}, false
	}
	var as, ps string
	var port uint16
	if json.Unmarshal(c.Concat[0], &as) != nil || json.Unmarshal(c.Concat[1], &ps) != nil || json.Unmarshal(c.Concat[2], &port) != nil {
		return element{}, false
	}
	a, err := netip.ParseAddr(as)
	if err != nil || !a.Is4() || (ps != "tcp" && ps != "udp") {
		return element{}, false
	}
	e.addr, e.proto, e.port = a, ps, port
	if len(c.Concat) == 4 {
		if json.Unmarshal(c.Concat[3], &e.mark) != nil {
			return element{}, false
		}
	}
	return e, true
}
