package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		check      func(Config) bool
		wantErr    string
	}{
		{"missing file is defaults", "", func(c Config) bool { return c.Hypervisor == "auto" && c.TAPPoolSize == 2 && !c.DNSUpstreamsSet() }, ""},
		{"values", "hypervisor = \"qemu\"\nsubnet = \"10.9.0.0/16\"\ntap_pool_size = 0\n", func(c Config) bool {
			return c.Hypervisor == "qemu" && c.SubnetPrefix().String() == "10.9.0.0/16" && c.TAPPoolSize == 0
		}, ""},
		{"empty upstreams is set", "dns_upstreams = []\n", func(c Config) bool { return c.DNSUpstreamsSet() && len(c.DNSUpstreams) == 0 }, ""},
		{"unknown key", "hypervisr = \"qemu\"\n", nil, "unknown key \"hypervisr\""},
		{"bad hypervisor", "hypervisor = \"kvm\"\n", nil, "not auto, firecracker or qemu"},
		{"bad subnet", "subnet = \"10.0.0.0/30\"\n", nil, "not an IPv4 prefix"},
		{"bad pool", "tap_pool_size = -1\n", nil, "tap_pool_size"},
		{"private ports default", "", func(c Config) bool { return len(c.GuestPrivatePorts) == 1 && c.GuestPrivatePorts[0] == 4096 }, ""},
		{"private ports set", "guest_private_ports = [4096, 8080]\n", func(c Config) bool { return len(c.GuestPrivatePorts) == 2 && c.GuestPrivatePorts[1] == 8080 }, ""},
		{"private ports off", "guest_private_ports = []\n", func(c Config) bool { return len(c.GuestPrivatePorts) == 0 }, ""},
		{"bad private port", "guest_private_ports = [70000]\n", nil, "not a TCP port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			if tc.file != "" {
				if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c, err := Load(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Load(%q) error = %v, want %q", tc.file, err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(c) {
				t.Fatalf("Load(%q) = %+v, %v", tc.file, c, err)
			}
		})
	}
}

func TestDefaultPaths(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/s")
	t.Setenv("XDG_DATA_HOME", "relative/ignored")
	t.Setenv("XDG_RUNTIME_DIR", "/r")
	p := DefaultPaths()
	if p.DB != "/s/banger/banger.db" || p.Socket != "/r/banger/bangerd.sock" || strings.HasPrefix(p.DataDir, "relative") {
		t.Fatalf("DefaultPaths() = %+v", p)
	}
}
