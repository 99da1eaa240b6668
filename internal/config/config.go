// Package config loads banger's configuration file and resolves its XDG paths.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/BurntSushi/toml"
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
	// Bridge is the host bridge the VMs' TAP devices join.
	Bridge string `toml:"bridge"`
	// Subnet is the VMs' IPv4 subnet; the bridge takes its first address.
	Subnet       string `toml:"subnet"`
	DefaultImage string `toml:"default_image"`
	VCPUs        int    `toml:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib"`
	// ReadyTimeoutSeconds bounds how long create/start wait for the guest.
	ReadyTimeoutSeconds int `toml:"ready_timeout_seconds"`

	// DNSListen are the addresses bangerd serves the .vm zone on; empty
	// turns the DNS server off. The bridge address is added when
	// DNSOnBridge is set, so guests resolve each other.
	DNSListen   []string `toml:"dns_listen"`
	DNSOnBridge bool     `toml:"dns_on_bridge"`
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
	// GuestPrivatePorts are guest TCP ports that other guests on the bridge
	// cannot reach (the host still can): by default the opencode server's
	// 4096, which runs commands for whoever talks to it. An empty list
	// turns the isolation off.
	GuestPrivatePorts []int `toml:"guest_private_ports"`

	// WebListenAddr is where bangerd serves its web UI; "" turns it off.
	WebListenAddr string `toml:"web_listen_addr"`

	// dnsUpstreamsSet records whether dns_upstreams was given at all.
	dnsUpstreamsSet bool
}

// DNSUpstreamsSet reports whether the config file set dns_upstreams (an
// empty list then means no forwarding).
func (c Config) DNSUpstreamsSet() bool { return c.dnsUpstreamsSet }

// Defaults returns the built-in configuration.
func Defaults() Config {
	return Config{
		Hypervisor:          "auto",
		Bridge:              "banger0",
		Subnet:              "172.30.0.0/24",
		VCPUs:               2,
		MemoryMiB:           1024,
		ReadyTimeoutSeconds: 300,
		DNSListen:           []string{"127.0.0.1:53"},
		DNSOnBridge:         true,
		ResolvedSplitDNS:    true,
		TAPPoolSize:         2,
		GuestPrivatePorts:   []int{4096},
		WebListenAddr:       "127.0.0.1:7777",
	}
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
	c.dnsUpstreamsSet = md.IsDefined("dns_upstreams")
	if und := md.Undecoded(); len(und) > 0 {
		return c, fmt.Errorf("reading config %s: unknown key %q: remove it or check its spelling", path, und[0].String())
	}
	return c, c.Validate()
}

// Validate checks the values that have a fixed form.
func (c Config) Validate() error {
	switch c.Hypervisor {
	case "auto", "qemu", "firecracker":
	default:
		return fmt.Errorf("config: hypervisor %q is not auto, firecracker or qemu", c.Hypervisor)
	}
	p, err := netip.ParsePrefix(c.Subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 29 {
		return fmt.Errorf("config: subnet %q is not an IPv4 prefix of /29 or larger (for example 172.30.0.0/24)", c.Subnet)
	}
	if c.TAPPoolSize < 0 || c.TAPPoolSize > 64 {
		return fmt.Errorf("config: tap_pool_size %d must be 0 to 64", c.TAPPoolSize)
	}
	for _, p := range c.GuestPrivatePorts {
		if p < 1 || p > 65535 {
			return fmt.Errorf("config: guest_private_ports: %d is not a TCP port (1-65535)", p)
		}
	}
	if c.Bridge == "" || len(c.Bridge) > 15 {
		return fmt.Errorf("config: bridge %q must be 1 to 15 characters", c.Bridge)
	}
	return nil
}

// SubnetPrefix returns the parsed, masked subnet.
func (c Config) SubnetPrefix() netip.Prefix {
	p, _ := netip.ParsePrefix(c.Subnet)
	return p.Masked()
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
}

// DefaultPaths resolves the XDG base directories for the current user.
func DefaultPaths() Paths {
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
	rt := os.Getenv("XDG_RUNTIME_DIR")
	if rt == "" || !filepath.IsAbs(rt) {
		if os.Geteuid() == 0 {
			rt = "/run"
		} else {
			rt = filepath.Join(os.TempDir(), "banger-"+strconv.Itoa(os.Getuid()))
		}
	}
	p := Paths{
		ConfigFile: filepath.Join(cfg, "banger", "config.toml"),
		StateDir:   filepath.Join(state, "banger"),
		DataDir:    filepath.Join(data, "banger"),
		RuntimeDir: filepath.Join(rt, "banger"),
	}
	p.Socket = filepath.Join(p.RuntimeDir, "bangerd.sock")
	p.DB = filepath.Join(p.StateDir, "banger.db")
	p.Log = filepath.Join(p.StateDir, "bangerd.log")
	p.KnownHosts = filepath.Join(p.StateDir, "known_hosts")
	return p
}
