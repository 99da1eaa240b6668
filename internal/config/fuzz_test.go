package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// configKeys are the keys a config file may set, from Config's toml tags.
func configKeys() []string {
	var keys []string
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if k, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// FuzzLoad: whatever the config file holds, Load either refuses it with an
// error that names the file or the key at fault, or returns a config that
// validates and that, written back as TOML, loads again as the same config.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"", "hypervisor = \"qemu\"\nsubnet = \"10.9.0.0/16\"\ntap_pool_size = 0\n", "dns_upstreams = []\n",
		"hypervisr = \"qemu\"\n", "hypervisor = \"kvm\"\n", "subnet = \"10.0.0.0/30\"\n", "tap_pool_size = -1\n",
		"guest_private_ports = [4096, 8080]\n", "guest_private_ports = []\n", "guest_private_ports = [70000]\n",
		"vcpus = -5\n", "vcpus = 33\n", "memory_mib = 1\n", "ready_timeout_seconds = -1\n", "dns_listen = [\"bogus\"]\n",
		"dns_upstreams = [\"resolver.example\"]\n", "dns_port = 70000\n", "bridge = \"a b\"\n", "dns_upstreams = [\"192.0.2.1\"]\n",
		"web_listen_addr = \"\"\n", "web_listen_addr = \"[::1]:7777\"\n", "web_listen_addr = \"localhost:8080\"\n",
		"web_listen_addr = \"0.0.0.0:7777\"\n", "web_listen_addr = \":7777\"\n", "web_listen_addr = \"0.0.0.0:7777\"\nweb_auth = \"login\"\n",
		"web_listen_addr = \"127.0.0.1\"\n", "web_listen_addr = \"127.0.0.1:http\"\n", "web_auth = \"none\"\n",
		"web_file_roots = [\"/srv/images\"]\n", "web_file_roots = []\n", "web_file_roots = [\"images\"]\n",
		"dns_listen = [\"127.0.0.1:53\", \"[::1]:53\"]\ndns_on_bridge = false\nresolved_split_dns = false\n",
		"runtime_dir = \"/opt/banger\"\nqemu_binary = \"/usr/bin/qemu-system-x86_64\"\nfirecracker_binary = \"\"\n",
		"[table]\nx = 1\n", "vcpus = 2.5\n", "memory_mib = 9223372036854775807\n", "bridge = \"\\u0000\"\n",
	} {
		f.Add([]byte(s))
	}
	keys := configKeys()
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			msg := err.Error()
			named := strings.HasPrefix(msg, "reading config "+path+": ")
			for _, k := range keys {
				named = named || strings.HasPrefix(msg, "config: "+k+" ") || strings.HasPrefix(msg, "config: "+k+":")
			}
			if !named {
				t.Fatalf("Load(%q) error %q names neither the file nor a key", data, msg)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load(%q) = a config that does not validate: %v", data, err)
		}
		var buf strings.Builder
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encoding the config Load(%q) returned: %v", data, err)
		}
		again := filepath.Join(dir, "again.toml")
		if err := os.WriteFile(again, []byte(buf.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		back, err := Load(again)
		if err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("Load(%q) = %+v; written back as\n%s\nit loads as %+v, %v", data, c, buf.String(), back, err)
		}
	})
}
