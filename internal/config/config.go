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
}

// Defaults returns the built-in configuration.
func Defaults() Config {
	return Config{
		Hypervisor:          "auto",
		Bridge:              "banger0",
		Subnet:              "172.30.0.0/24",
		VCPUs:               2,
		MemoryMiB:           1024,
		ReadyTimeoutSeconds: 300,
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
