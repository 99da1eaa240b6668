// Package guestconfig builds the kernel command line that configures a guest and parses it back inside the guest.
package guestconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Network is the static form of the kernel's ip= argument:
// ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>.
// The guest's net-setup applies it; the kernel itself ignores it when IP
// autoconfiguration is not built in.
type Network struct {
	Client    netip.Addr
	Server    netip.Addr // zero when empty
	Gateway   netip.Addr // zero when empty
	PrefixLen int
	Hostname  string
	Device    string // eth0 when empty
	Autoconf  string // off, none, static or empty
	DNS       []netip.Addr
}

// maxDNS is how many resolvers the ip= argument carries.
const maxDNS = 2

// Prefix is the client address with its prefix length.
func (n Network) Prefix() netip.Prefix {
	return netip.PrefixFrom(n.Client, n.PrefixLen)
}

// Validate checks that n can be written as an ip= argument and makes sense:
// IPv4 addresses, a gateway inside the client's subnet, a hostname that is a
// DNS label.
func (n Network) Validate() error {
	if !n.Client.Is4() {
		return fmt.Errorf("guest network: client address %v is not IPv4", n.Client)
	}
	if n.PrefixLen < 1 || n.PrefixLen > 32 {
		return fmt.Errorf("guest network: prefix length %d out of range 1-32", n.PrefixLen)
	}
	for what, a := range map[string]netip.Addr{"server": n.Server, "gateway": n.Gateway} {
		if a.IsValid() && !a.Is4() {
			return fmt.Errorf("guest network: %s address %v is not IPv4", what, a)
		}
	}
	if n.Gateway.IsValid() {
		if !n.Prefix().Masked().Contains(n.Gateway) {
			return fmt.Errorf("guest network: gateway %v is outside %v", n.Gateway, n.Prefix().Masked())
		}
		if n.Gateway == n.Client {
			return fmt.Errorf("guest network: gateway and client are both %v", n.Client)
		}
	}
	if n.Hostname != "" && !isLabel(n.Hostname) {
		return fmt.Errorf("guest network: hostname %q is not a DNS label (letters, digits and '-', at most 63)", n.Hostname)
	}
	if !isArg(n.Device) || strings.ContainsAny(n.Device, ":/") {
		return fmt.Errorf("guest network: device name %q is not valid: use printable ASCII without spaces, quotes, ':' or '/'", truncate(n.Device, 64))
	}
	switch n.Autoconf {
	case "", "off", "none", "static":
	default:
		return fmt.Errorf("guest network: autoconf %q is not supported: use off", n.Autoconf)
	}
	if len(n.DNS) > maxDNS {
		return fmt.Errorf("guest network: %d resolvers given, the ip= argument carries at most %d", len(n.DNS), maxDNS)
	}
	for _, d := range n.DNS {
		if !d.Is4() {
			return fmt.Errorf("guest network: resolver %v is not IPv4", d)
		}
	}
	return nil
}

// Arg renders n as the kernel argument ip=...; n must be valid.
func (n Network) Arg() string {
	opt := func(a netip.Addr) string {
		if a.IsValid() {
			return a.String()
		}
		return ""
	}
	mask := ^uint32(0) << (32 - n.PrefixLen)
	dns := make([]string, maxDNS)
	for i, d := range n.DNS {
		dns[i] = d.String()
	}
	fields := []string{
		n.Client.String(), opt(n.Server), opt(n.Gateway),
		netip.AddrFrom4([4]byte{byte(mask >> 24), byte(mask >> 16), byte(mask >> 8), byte(mask)}).String(),
		n.Hostname, n.Device, n.Autoconf, dns[0], dns[1],
	}
	return "ip=" + strings.TrimRight(strings.Join(fields, ":"), ":")
}

// Config is everything a guest learns from its kernel command line.
type Config struct {
	// BaseArgs are the bundle's default arguments (console, panic, ...).
	BaseArgs string
	// Root is the root device, such as /dev/vda.
	Root string
	// ReadOnlyRoot mounts the root device read-only.
	ReadOnlyRoot bool
	// Network is the guest's static network.
	Network Network
	// MachineID, when set, is written by banger's initramfs into an image
	// whose /etc/machine-id is empty (banger.machine_id=), so that the
	// boot is not systemd's "first boot", which under TCG costs about a
	// third of a second more (it applies the unit presets).
	MachineID string
}

// MachineIDArg is the kernel argument that carries Config.MachineID.
const MachineIDArg = "banger.machine_id"

// ValidMachineID reports whether id is a machine id as machine-id(5) has
// it: 32 lowercase hex digits, not all zero.
func ValidMachineID(id string) bool {
	if len(id) != 32 || id == strings.Repeat("0", 32) {
		return false
	}
	return !strings.ContainsFunc(id, func(r rune) bool { return (r < '0' || r > '9') && (r < 'a' || r > 'f') })
}

// MaxCmdline is the longest kernel command line banger writes: x86 Linux
// takes 2048 bytes, less its terminating NUL.
const MaxCmdline = 2047

// reserved are the arguments Config writes itself.
var reserved = []string{"root", "rw", "ro", "ip", MachineIDArg}

// Validate checks every part of c.
func (c *Config) Validate() error {
	if !strings.HasPrefix(c.Root, "/dev/") && !strings.HasPrefix(c.Root, "LABEL=") && !strings.HasPrefix(c.Root, "UUID=") {
		return fmt.Errorf("guest config: root %q is not a /dev/ path, LABEL= or UUID=", truncate(c.Root, 64))
	}
	if c.Root == "LABEL=" || c.Root == "UUID=" {
		return fmt.Errorf("guest config: root %q names no label or UUID", c.Root)
	}
	if !isArg(c.Root) {
		return fmt.Errorf("guest config: root %q has a space, a quote or a byte that is not printable ASCII", truncate(c.Root, 64))
	}
	if err := c.Network.Validate(); err != nil {
		return fmt.Errorf("guest config: %w", err)
	}
	if c.MachineID != "" && !ValidMachineID(c.MachineID) {
		return fmt.Errorf("guest config: machine id %q is not 32 lowercase hex digits, not all zero", truncate(c.MachineID, 64))
	}
	for _, arg := range strings.Fields(c.BaseArgs) {
		if !isArg(arg) {
			return fmt.Errorf("guest config: base argument %q has a quote or a byte that is not printable ASCII", truncate(arg, 64))
		}
		if arg == "--" {
			return errors.New("guest config: base argument \"--\" would hand root= and ip= to init instead of the kernel: remove it from the bundle's boot_args")
		}
		key, _, _ := strings.Cut(arg, "=")
		if slices.Contains(reserved, key) {
			return fmt.Errorf("guest config: base argument %q sets %s, which banger writes itself", truncate(arg, 64), key)
		}
	}
	return nil
}

// isArg reports whether s can be written as (part of) one kernel argument:
// printable ASCII without spaces or quotes.
func isArg(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x21 || r > 0x7e || r == '"' })
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Cmdline validates c and renders the kernel command line: base arguments,
// root, rw/ro, ip= and the machine id. It is printable ASCII and at most MaxCmdline bytes.
func (c *Config) Cmdline() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	args := strings.Fields(c.BaseArgs)
	mode := "rw"
	if c.ReadOnlyRoot {
		mode = "ro"
	}
	args = append(args, "root="+c.Root, mode, c.Network.Arg())
	if c.MachineID != "" {
		args = append(args, MachineIDArg+"="+c.MachineID)
	}
	line := strings.Join(args, " ")
	if len(line) > MaxCmdline {
		return "", fmt.Errorf("guest config: the kernel command line is %d bytes, more than the %d Linux takes: shorten the bundle's boot_args", len(line), MaxCmdline)
	}
	return line, nil
}

// ParseNetwork finds the last ip= argument in a kernel command line and
// parses its static form.
func ParseNetwork(cmdline string) (Network, error) {
	val, found := "", false
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "ip="); ok {
			val, found = v, true
		}
	}
	if !found {
		return Network{}, errors.New("parsing ip= argument: the kernel command line has none")
	}
	parts := strings.Split(val, ":")
	if len(parts) < 2 {
		return Network{}, fmt.Errorf("parsing ip=%s: not the static form <client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>", val)
	}
	for len(parts) < 9 {
		parts = append(parts, "")
	}
	var n Network
	var err error
	if n.Client, err = netip.ParseAddr(parts[0]); err != nil || !n.Client.Is4() {
		return Network{}, fmt.Errorf("parsing ip=%s: client address %q is not IPv4", val, parts[0])
	}
	for i, dst := range []*netip.Addr{&n.Server, &n.Gateway} {
		if parts[1+i] == "" {
			continue
		}
		if *dst, err = netip.ParseAddr(parts[1+i]); err != nil || !dst.Is4() {
			return Network{}, fmt.Errorf("parsing ip=%s: address %q is not IPv4", val, parts[1+i])
		}
	}
	if n.PrefixLen, err = maskLen(parts[3], n.Client); err != nil {
		return Network{}, fmt.Errorf("parsing ip=%s: %w", val, err)
	}
	n.Hostname = parts[4]
	n.Device = parts[5]
	if n.Device == "" {
		n.Device = "eth0"
	}
	n.Autoconf = parts[6]
	switch n.Autoconf {
	case "", "off", "none", "static":
	default:
		return Network{}, fmt.Errorf("parsing ip=%s: autoconf %q is not supported: use off", val, n.Autoconf)
	}
	for _, d := range parts[7:9] {
		if d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return Network{}, fmt.Errorf("parsing ip=%s: dns server %q: %w", val, d, err)
		}
		n.DNS = append(n.DNS, a)
	}
	return n, nil
}

// maskLen turns a dotted netmask (or a bare prefix length) into a prefix
// length; an empty mask means the address's classful default.
func maskLen(mask string, client netip.Addr) (int, error) {
	if mask == "" {
		switch b := client.As4()[0]; {
		case b < 128:
			return 8, nil
		case b < 192:
			return 16, nil
		default:
			return 24, nil
		}
	}
	var n int
	if _, err := fmt.Sscanf(mask, "%d", &n); err == nil && !strings.Contains(mask, ".") {
		if n < 0 || n > 32 {
			return 0, fmt.Errorf("prefix length %q out of range", mask)
		}
		return n, nil
	}
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() {
		return 0, fmt.Errorf("netmask %q is not a dotted IPv4 mask", mask)
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("netmask %q is not contiguous", mask)
	}
	return ones, nil
}

// isLabel reports whether s is a DNS label: 1-63 letters, digits and
// hyphens, not starting or ending with a hyphen.
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
