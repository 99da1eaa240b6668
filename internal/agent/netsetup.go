package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/runner"
)

// IPConfig is the static configuration of the kernel's ip= argument:
// ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>.
type IPConfig struct {
	Client    netip.Addr
	Server    netip.Addr // zero when empty
	Gateway   netip.Addr // zero when empty
	PrefixLen int
	Hostname  string
	Device    string // default eth0
	Autoconf  string
	DNS       []netip.Addr
}

// Prefix is the client address with its prefix length.
func (c IPConfig) Prefix() netip.Prefix {
	return netip.PrefixFrom(c.Client, c.PrefixLen)
}

// ParseIP finds the last ip= argument in a kernel command line and parses
// its static form.
func ParseIP(cmdline string) (IPConfig, error) {
	val, found := "", false
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "ip="); ok {
			val, found = v, true
		}
	}
	if !found {
		return IPConfig{}, errors.New("parsing ip= argument: the kernel command line has none")
	}
	parts := strings.Split(val, ":")
	if len(parts) < 2 {
		return IPConfig{}, fmt.Errorf("parsing ip=%s: not the static form <client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>", val)
	}
	for len(parts) < 9 {
		parts = append(parts, "")
	}
	var c IPConfig
	var err error
	if c.Client, err = netip.ParseAddr(parts[0]); err != nil || !c.Client.Is4() {
		return IPConfig{}, fmt.Errorf("parsing ip=%s: client address %q is not IPv4", val, parts[0])
	}
	for i, dst := range []*netip.Addr{&c.Server, &c.Gateway} {
		if parts[1+i] == "" {
			continue
		}
		if *dst, err = netip.ParseAddr(parts[1+i]); err != nil || !dst.Is4() {
			return IPConfig{}, fmt.Errorf("parsing ip=%s: address %q is not IPv4", val, parts[1+i])
		}
	}
	if c.PrefixLen, err = maskLen(parts[3], c.Client); err != nil {
		return IPConfig{}, fmt.Errorf("parsing ip=%s: %w", val, err)
	}
	c.Hostname = parts[4]
	c.Device = parts[5]
	if c.Device == "" {
		c.Device = "eth0"
	}
	c.Autoconf = parts[6]
	switch c.Autoconf {
	case "", "off", "none", "static":
	default:
		return IPConfig{}, fmt.Errorf("parsing ip=%s: autoconf %q is not supported: use off", val, c.Autoconf)
	}
	for _, d := range parts[7:9] {
		if d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return IPConfig{}, fmt.Errorf("parsing ip=%s: dns server %q: %w", val, d, err)
		}
		c.DNS = append(c.DNS, a)
	}
	return c, nil
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

// Commands are the ip(8) invocations that apply c.
func (c IPConfig) Commands() [][]string {
	cmds := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", c.Device, "up"},
		{"addr", "replace", c.Prefix().String(), "dev", c.Device},
	}
	if c.Gateway.IsValid() {
		cmds = append(cmds, []string{"route", "replace", "default", "via", c.Gateway.String(), "dev", c.Device})
	}
	return cmds
}

// ResolvConf is the /etc/resolv.conf content for c.
func (c IPConfig) ResolvConf() string {
	var b strings.Builder
	b.WriteString("# Written by banger-vsock-agent net-setup from the kernel ip= argument.\n")
	for _, d := range c.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return b.String()
}

// hostsWithName returns /etc/hosts content that maps 127.0.1.1 to name.
func hostsWithName(old, name string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(old, "\n"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "127.0.1.1") {
			continue
		}
		lines = append(lines, l)
	}
	if name != "" {
		lines = append(lines, "127.0.1.1\t"+name)
	}
	return strings.Join(lines, "\n") + "\n"
}

// NetSetup configures the guest network from the ip= argument of cmdline
// with the guest's ip command: links, address, default route, hostname and
// /etc/resolv.conf.
func NetSetup(cmdline string) error {
	c, err := ParseIP(cmdline)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The NIC's driver is a module the initramfs loaded; give it a moment.
	dev := filepath.Join("/sys/class/net", c.Device)
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	ip := "ip"
	for _, p := range []string{"/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			ip = p
			break
		}
	}
	for _, args := range c.Commands() {
		if _, err := runner.Default.Run(ctx, ip, args...); err != nil {
			return fmt.Errorf("configuring network %s: %w", c.Device, err)
		}
	}
	if c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			return fmt.Errorf("setting hostname %s: %w", c.Hostname, err)
		}
		if err := writeFile("/etc/hostname", c.Hostname+"\n"); err != nil {
			return err
		}
		old, _ := os.ReadFile("/etc/hosts")
		if len(old) == 0 {
			old = []byte("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
		}
		if err := writeFile("/etc/hosts", hostsWithName(string(old), c.Hostname)); err != nil {
			return err
		}
	}
	if err := writeFile("/etc/resolv.conf", c.ResolvConf()); err != nil {
		return err
	}
	slog.Info("network configured", "device", c.Device, "address", c.Prefix(), "gateway", c.Gateway, "hostname", c.Hostname, "dns", c.DNS)
	return nil
}

// writeFile replaces path atomically (a symlink, such as a resolver's
// resolv.conf link, is replaced by a file).
func writeFile(path, content string) error {
	tmp := path + ".banger-tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
