// Package config loads banger's configuration file and resolves its XDG paths.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"

	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/units"
)

// Config is the user's config file ($XDG_CONFIG_HOME/banger/config.toml).
// Every field has a working default.
type Config struct {
	// Hypervisor is auto, firecracker or qemu. auto picks firecracker when its
	// binary exists and hardware KVM works, qemu otherwise.
	Hypervisor        string `toml:"hypervisor"`
	FirecrackerBinary string `toml:"firecracker_binary"`
	QEMUBinary        string `toml:"qemu_binary"`
	// RuntimeDir is the runtime bundle directory; empty means discovery.
	RuntimeDir string `toml:"runtime_dir"`
	// Bridge is the host bridge the VMs' TAP devices join; empty means the
	// owner's own (network.NamesFor: banger0 for root, banger<uid> for a user).
	Bridge string `toml:"bridge"`
	// Subnet is the VMs' IPv4 subnet; the bridge takes its first address.
	// Empty means the owner's own (172.30.0.0/24 for root).
	Subnet       string `toml:"subnet"`
	DefaultImage string `toml:"default_image"`
	VCPUs        int    `toml:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib"`
	// ReadyTimeoutSeconds bounds how long create/start wait for the guest.
	ReadyTimeoutSeconds int `toml:"ready_timeout_seconds"`
	// WorkSize is the size of a new VM's /root disk ("16G"), unless the
	// create names one. The disk is sparse: it takes host space only as
	// the guest writes to it.
	WorkSize string `toml:"work_size"`

	// DNSListen are host addresses bangerd also serves the .vm zone on
	// (root: 127.0.0.1:53; a user: none, since port 53 needs root). The
	// bridge address is served when DNSOnBridge is set, so guests and the
	// host resolve VMs there.
	DNSListen   []string `toml:"dns_listen"`
	DNSOnBridge bool     `toml:"dns_on_bridge"`
	// DNSPort is the port bangerd's DNS server binds on the bridge address:
	// 0 means 53 for root and DefaultUserDNSPort for a user, whose bangerd
	// cannot bind 53; banger's nftables table then redirects the bridge
	// address's port 53 to it, for guests and the host alike.
	DNSPort int `toml:"dns_port"`
	// DNSUpstreams are the resolvers names outside .vm are forwarded to
	// ("ip:port"). Unset means the host's resolvers; an empty list turns
	// forwarding off.
	DNSUpstreams []string `toml:"dns_upstreams"`
	// ResolvedSplitDNS routes ~vm queries from systemd-resolved to bangerd
	// on hosts that run systemd-resolved.
	ResolvedSplitDNS bool `toml:"resolved_split_dns"`
	// TAPPoolSize idle TAP devices are kept ready for fast creates; 0 turns
	// the pool off.
	TAPPoolSize int `toml:"tap_pool_size"`
	// ConsoleLogMax caps each VM's console log ("8M"): past it the log
	// rotates to console.log.1, so a guest flooding its serial console
	// cannot fill the host's disk.
	ConsoleLogMax string `toml:"console_log_max"`
	// WarmAfterCreate snapshots an image's VM in the background after a
	// cold create of it, so that later creates restore the snapshot (warm
	// creates); false leaves that to 'banger image warm'.
	WarmAfterCreate bool `toml:"warm_after_create"`
	// GuestPrivatePorts are guest TCP ports that other guests on the bridge
	// cannot reach (the host still can): by default the opencode server's
	// 4096, which runs commands for whoever talks to it. An empty list
	// turns the isolation off.
	GuestPrivatePorts []int `toml:"guest_private_ports"`

	// WebListenAddr is where bangerd serves its web UI; "" turns it off.
	// It must be a loopback address unless WebAuth is "login".
	WebListenAddr string `toml:"web_listen_addr"`
	// WebAuth says who the web UI answers: "owner" (bangerd's own user,
	// told by the TCP peer's uid, and browsers logged in with the link
	// 'banger ui' prints) or "login" (only logged-in browsers; needed for
	// an address other hosts can reach).
	WebAuth string `toml:"web_auth"`
	// WebFileRoots are the directories the web UI's file picker shows and
	// registers images from. Unset means bangerd's user's home and
	// banger's data dir; an empty list turns the picker off.
	WebFileRoots []string `toml:"web_file_roots"`

	// dnsUpstreamsSet records whether dns_upstreams was given at all.
	dnsUpstreamsSet bool
	// webFileRootsSet records whether web_file_roots was given at all.
	webFileRootsSet bool
}

// WebFileRootsSet reports whether the config file set web_file_roots (an
// empty list then means no file picker).
func (c Config) WebFileRootsSet() bool { return c.webFileRootsSet }

// DNSUpstreamsSet reports whether the config file set dns_upstreams (an
// empty list then means no forwarding).
func (c Config) DNSUpstreamsSet() bool { return c.dnsUpstreamsSet }

// DefaultUserDNSPort is the bridge-side DNS port of a user's bangerd.
const DefaultUserDNSPort = 10053

// Defaults returns the built-in configuration of this process's user.
func Defaults() Config { return DefaultsFor(os.Geteuid()) }

// DefaultsFor returns the built-in configuration of uid's bangerd.
func DefaultsFor(uid int) Config {
	var listen []string
	if uid == 0 {
		listen = []string{"127.0.0.1:53"}
	}
	return Config{
		Hypervisor:          "auto",
		VCPUs:               2,
		MemoryMiB:           1024,
		ReadyTimeoutSeconds: 300,
		WorkSize:            DefaultWorkSize,
		DNSListen:           listen,
		DNSOnBridge:         true,
		ResolvedSplitDNS:    true,
		TAPPoolSize:         2,
		ConsoleLogMax:       "8M",
		WarmAfterCreate:     true,
		GuestPrivatePorts:   []int{4096},
		WebListenAddr:       "127.0.0.1:7777",
		WebAuth:             "owner",
	}
}

// Bounds of console_log_max.
const (
	MinConsoleLogMax = 64 << 10
	MaxConsoleLogMax = 1 << 30
)

// ConsoleLogMaxBytes is console_log_max in bytes.
func (c Config) ConsoleLogMaxBytes() (int64, error) {
	n, err := units.ParseSize(c.ConsoleLogMax)
	if err != nil || n < MinConsoleLogMax || n > MaxConsoleLogMax {
		return 0, fmt.Errorf("config: console_log_max = %q: use a size from 64K to 1G, such as \"8M\"", truncate(c.ConsoleLogMax, 64))
	}
	return n, nil
}

// Load reads path on top of the defaults. A missing file is not an error.
func Load(path string) (Config, error) {
	c := Defaults()
	if path == "" {
		return c, nil
	}
	md, err := toml.DecodeFile(path, &c)
	if errors.Is(err, fs.ErrNotExist) {
		return Defaults(), nil
	}
	if err != nil {
		return c, fmt.Errorf("reading config %s: %w", path, err)
	}
	// The TOML decoder matches keys without regard to case; banger's keys
	// are spelled one way, so that what is set is what IsDefined sees.
	names := keyNames()
	for _, k := range md.Keys() {
		if name := k.String(); !slices.Contains(names, name) {
			return c, fmt.Errorf("reading config %s: unknown key %.64q: keys are lower case, such as %.64q: check its spelling", path, name, strings.ToLower(name))
		}
	}
	c.dnsUpstreamsSet = md.IsDefined("dns_upstreams")
	c.webFileRootsSet = md.IsDefined("web_file_roots")
	if und := md.Undecoded(); len(und) > 0 {
		return c, fmt.Errorf("reading config %s: unknown key %q: remove it or check its spelling", path, und[0].String())
	}
	return c, c.Validate()
}

// keyNames are the config file's keys, as the Config fields' toml tags
// spell them.
func keyNames() []string {
	t := reflect.TypeFor[Config]()
	var names []string
	for i := range t.NumField() {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

// Limits of the values Validate accepts.
const (
	MaxVCPUs            = 32
	MinMemoryMiB        = 256
	MaxReadyTimeoutSecs = 3600
	// MinWorkSize is the work-seed's size: /root disks only grow.
	MinWorkSize = 64 << 20
	MaxWorkSize = 16 << 40
)

// DefaultWorkSize is the size of a new VM's /root disk.
const DefaultWorkSize = "16G"

// WorkSizeBytes is WorkSize in bytes (0 when it does not parse: Validate
// refuses that).
func (c Config) WorkSizeBytes() int64 {
	n, err := units.ParseSize(c.WorkSize)
	if err != nil {
		return 0
	}
	return n
}

// Validate checks every value that has a fixed form or range; errors name
// the config key.
func (c Config) Validate() error {
	switch c.Hypervisor {
	case "auto", "qemu", "firecracker":
	default:
		return fmt.Errorf("config: hypervisor %q is not auto, firecracker or qemu", c.Hypervisor)
	}
	if c.Subnet != "" {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil || !p.Addr().Is4() || p.Bits() > 29 {
			return fmt.Errorf("config: subnet %q is not an IPv4 prefix of /29 or larger (for example 172.30.0.0/24)", c.Subnet)
		}
	}
	if c.Bridge != "" && (len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/: \t\n\"'\\;")) {
		return fmt.Errorf("config: bridge %q must be 1 to 15 characters without '/', ':', quotes or spaces", c.Bridge)
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return fmt.Errorf("config: vcpus = %d: use 1 to %d", c.VCPUs, MaxVCPUs)
	}
	if c.MemoryMiB < MinMemoryMiB {
		return fmt.Errorf("config: memory_mib = %d: use %d or more", c.MemoryMiB, MinMemoryMiB)
	}
	if c.ReadyTimeoutSeconds < 1 || c.ReadyTimeoutSeconds > MaxReadyTimeoutSecs {
		return fmt.Errorf("config: ready_timeout_seconds = %d: use 1 to %d", c.ReadyTimeoutSeconds, MaxReadyTimeoutSecs)
	}
	if n, err := units.ParseSize(c.WorkSize); err != nil {
		return fmt.Errorf("config: work_size = %q: %w (for example work_size = %q)", c.WorkSize, err, DefaultWorkSize)
	} else if n < MinWorkSize || n > MaxWorkSize {
		return fmt.Errorf("config: work_size = %q: use %s to %s", c.WorkSize, units.FormatSize(MinWorkSize), units.FormatSize(MaxWorkSize))
	}
	for _, a := range c.DNSListen {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return fmt.Errorf("config: dns_listen: %q is not an ip:port address (for example 127.0.0.1:53)", a)
		}
	}
	for _, u := range c.DNSUpstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			if _, err := netip.ParseAddr(u); err != nil {
				return fmt.Errorf("config: dns_upstreams: %q is not an ip or ip:port address (for example 192.0.2.53:53)", u)
			}
		}
	}
	if c.DNSPort < 0 || c.DNSPort > 65535 {
		return fmt.Errorf("config: dns_port = %d: use 0 (automatic) or a port 1-65535", c.DNSPort)
	}
	if _, err := c.ConsoleLogMaxBytes(); err != nil {
		return err
	}
	if c.TAPPoolSize < 0 || c.TAPPoolSize > 64 {
		return fmt.Errorf("config: tap_pool_size = %d: use 0 to 64", c.TAPPoolSize)
	}
	for _, p := range c.GuestPrivatePorts {
		if p < 1 || p > 65535 {
			return fmt.Errorf("config: guest_private_ports: %d is not a TCP port (1-65535)", p)
		}
	}
	return c.validateWeb()
}

// Names returns the host names uid's bangerd uses (network.NamesFor), with
// the configured bridge and subnet in place of the derived ones.
func (c Config) Names(uid int) network.Names {
	n := network.NamesFor(uid)
	if c.Bridge != "" {
		n.Bridge = c.Bridge
	}
	if p, err := netip.ParsePrefix(c.Subnet); err == nil {
		n.Subnet = p.Masked()
	}
	return n
}

// BridgeDNSPort is the port the DNS server binds on the bridge address.
func (c Config) BridgeDNSPort(uid int) int {
	switch {
	case c.DNSPort != 0:
		return c.DNSPort
	case uid == 0:
		return 53
	}
	return DefaultUserDNSPort
}

// validateWeb checks the web UI's keys: a UI that other hosts can reach
// must make every browser log in.
func (c Config) validateWeb() error {
	switch c.WebAuth {
	case "owner", "login":
	default:
		return fmt.Errorf("config: web_auth %q is not owner or login", c.WebAuth)
	}
	for _, r := range c.WebFileRoots {
		if !filepath.IsAbs(r) || strings.ContainsRune(r, 0) {
			return fmt.Errorf("config: web_file_roots: %q is not an absolute path", r)
		}
	}
	if c.WebListenAddr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.WebListenAddr)
	if err != nil {
		return fmt.Errorf("config: web_listen_addr %q is not host:port (for example 127.0.0.1:7777): %w", c.WebListenAddr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("config: web_listen_addr %q: %q is not a port number", c.WebListenAddr, port)
	}
	if c.WebAuth != "login" && !loopbackHost(host) {
		return fmt.Errorf("config: web_listen_addr %q is not a loopback address, so other hosts could reach the web UI: "+
			"listen on 127.0.0.1, or set web_auth = \"login\" so that every browser must log in with the link 'banger ui' prints", c.WebListenAddr)
	}
	return nil
}

// loopbackHost reports whether a listen host names only this machine's
// loopback: localhost or a loopback IP. "" and 0.0.0.0 listen everywhere.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.IsLoopback()
}

// Paths are the directories and files banger uses.
type Paths struct {
	ConfigFile string
	// StateDir holds the database, the daemon log and known_hosts.
	StateDir string
	// DataDir holds the VMs' disks and console logs.
	DataDir string
	// RuntimeDir holds sockets and pid files; it must survive a daemon restart
	// but not a host reboot.
	RuntimeDir string
	Socket     string
	DB         string
	Log        string
	KnownHosts string
	// Lock is bangerd's single-instance lock, beside the database: two
	// daemons never share one state dir, whatever their runtime dirs.
	Lock string
}

// DefaultPaths resolves the XDG base directories for the current user.
//
// The runtime dir (sockets, pid files) is $XDG_RUNTIME_DIR/banger, or
// /run/banger for root. A user without XDG_RUNTIME_DIR gets
// /tmp/banger-<uid>/banger, but only when /tmp/banger-<uid> is a real
// directory of theirs that nobody else can write: another local user could
// have made it first and put a socket of their own there. Otherwise (and for
// an XDG_RUNTIME_DIR of someone else's) the runtime dir moves under the
// state dir, which is in the user's home.
func DefaultPaths() Paths { return defaultPaths(os.Geteuid()) }

// defaultPaths is DefaultPaths for the user uid; tests pass another uid
// than theirs to play a non-root user when they run as root.
func defaultPaths(uid int) Paths {
	home, _ := os.UserHomeDir()
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" && filepath.IsAbs(v) {
			return v
		}
		return def
	}
	cfg := env("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	state := env("XDG_STATE_HOME", filepath.Join(home, ".local", "state"))
	data := env("XDG_DATA_HOME", filepath.Join(home, ".local", "share"))
	p := Paths{
		ConfigFile: filepath.Join(cfg, "banger", "config.toml"),
		StateDir:   filepath.Join(state, "banger"),
		DataDir:    filepath.Join(data, "banger"),
	}
	rt := os.Getenv("XDG_RUNTIME_DIR")
	if rt != "" && filepath.IsAbs(rt) {
		os.MkdirAll(rt, 0o700) // made by us, or checked below
	}
	switch {
	case rt != "" && filepath.IsAbs(rt) && safeDir(rt, uid, false):
		p.RuntimeDir = filepath.Join(rt, "banger")
	case uid == 0:
		p.RuntimeDir = "/run/banger"
	default:
		tmp := filepath.Join(os.TempDir(), "banger-"+strconv.Itoa(uid))
		os.Mkdir(tmp, 0o700)
		if safeDir(tmp, uid, true) {
			p.RuntimeDir = filepath.Join(tmp, "banger")
		} else {
			p.RuntimeDir = filepath.Join(p.StateDir, "run")
		}
	}
	p.Socket = filepath.Join(p.RuntimeDir, "bangerd.sock")
	p.DB = filepath.Join(p.StateDir, "banger.db")
	p.Log = filepath.Join(p.StateDir, "bangerd.log")
	p.KnownHosts = filepath.Join(p.StateDir, "known_hosts")
	p.Lock = filepath.Join(p.StateDir, "bangerd.lock")
	return p
}

// safeDir reports whether dir is a directory (not a symlink) that uid owns
// (or root, unless private) and that no other user can write to; private
// also refuses group and other read access.
func safeDir(dir string, uid int, private bool) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	if int(st.Uid) != uid && (private || st.Uid != 0) {
		return false
	}
	mask := os.FileMode(0o022)
	if private {
		mask = 0o077
	}
	return fi.Mode().Perm()&mask == 0
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
