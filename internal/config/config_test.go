package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmtest"
)

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		check      func(Config) bool
		wantErr    string
	}{
		{"missing file is defaults", "", func(c Config) bool { return c.Hypervisor == "auto" && c.TAPPoolSize == 2 && !c.DNSUpstreamsSet() }, ""},
		{"values", "hypervisor = \"qemu\"\nsubnet = \"10.9.0.0/16\"\ntap_pool_size = 0\n", func(c Config) bool {
			return c.Hypervisor == "qemu" && c.Names(1000).Subnet.String() == "10.9.0.0/16" && c.Names(1000).Bridge == "banger1000" && c.TAPPoolSize == 0
		}, ""},
		{"empty upstreams is set", "dns_upstreams = []\n", func(c Config) bool { return c.DNSUpstreamsSet() && len(c.DNSUpstreams) == 0 }, ""},
		{"unknown key", "hypervisr = \"qemu\"\n", nil, "unknown key \"hypervisr\""},
		{"key in another case", "DNS_Upstreams = []\n", nil, "unknown key \"DNS_Upstreams\": keys are lower case, such as \"dns_upstreams\""},
		{"bad hypervisor", "hypervisor = \"kvm\"\n", nil, "not auto, firecracker or qemu"},
		{"bad subnet", "subnet = \"10.0.0.0/30\"\n", nil, "not an IPv4 prefix"},
		{"bad pool", "tap_pool_size = -1\n", nil, "tap_pool_size"},
		{"console cap default", "", func(c Config) bool { n, err := c.ConsoleLogMaxBytes(); return err == nil && n == 8<<20 }, ""},
		{"console cap set", "console_log_max = \"256K\"\n", func(c Config) bool { n, err := c.ConsoleLogMaxBytes(); return err == nil && n == 256<<10 }, ""},
		{"console cap too small", "console_log_max = \"1K\"\n", nil, "console_log_max = \"1K\": use a size from 64K to 1G"},
		{"console cap junk", "console_log_max = \"lots\"\n", nil, "console_log_max"},
		{"private ports default", "", func(c Config) bool { return len(c.GuestPrivatePorts) == 1 && c.GuestPrivatePorts[0] == 4096 }, ""},
		{"private ports set", "guest_private_ports = [4096, 8080]\n", func(c Config) bool { return len(c.GuestPrivatePorts) == 2 && c.GuestPrivatePorts[1] == 8080 }, ""},
		{"private ports off", "guest_private_ports = []\n", func(c Config) bool { return len(c.GuestPrivatePorts) == 0 }, ""},
		{"bad private port", "guest_private_ports = [70000]\n", nil, "not a TCP port"},
		{"bad vcpus", "vcpus = -5\n", nil, "vcpus = -5"},
		{"too many vcpus", "vcpus = 33\n", nil, "vcpus = 33"},
		{"tiny memory", "memory_mib = 1\n", nil, "memory_mib = 1"},
		{"work size default", "", func(c Config) bool { return c.WorkSize == "16G" && c.WorkSizeBytes() == 16<<30 }, ""},
		{"work size", "work_size = \"64GiB\"\n", func(c Config) bool { return c.WorkSizeBytes() == 64<<30 }, ""},
		{"bad work size", "work_size = \"lots\"\n", nil, `config: work_size = "lots": parsing size "lots"`},
		{"negative work size", "work_size = \"-1G\"\n", nil, `config: work_size = "-1G"`},
		{"tiny work size", "work_size = \"1M\"\n", nil, `config: work_size = "1M": use 64M to 16T`},
		{"huge work size", "work_size = \"17T\"\n", nil, `config: work_size = "17T": use 64M to 16T`},
		{"work size not a string", "work_size = 16\n", nil, "work_size"},
		{"bad timeout", "ready_timeout_seconds = -1\n", nil, "ready_timeout_seconds = -1"},
		{"bogus dns_listen", "dns_listen = [\"bogus\"]\n", nil, "dns_listen: \"bogus\""},
		{"bogus upstream", "dns_upstreams = [\"resolver.example\"]\n", nil, "dns_upstreams"},
		{"bad dns_port", "dns_port = 70000\n", nil, "dns_port"},
		{"bad bridge", "bridge = \"a b\"\n", nil, "bridge"},
		{"upstream without port", "dns_upstreams = [\"192.0.2.1\"]\n", func(c Config) bool { return c.DNSUpstreams[0] == "192.0.2.1" }, ""},
		{"web defaults", "", func(c Config) bool {
			return c.WebListenAddr == "127.0.0.1:7777" && c.WebAuth == "owner" && !c.WebFileRootsSet() && c.WebFileRoots == nil
		}, ""},
		{"web off", "web_listen_addr = \"\"\n", func(c Config) bool { return c.WebListenAddr == "" }, ""},
		{"web on ::1", "web_listen_addr = \"[::1]:7777\"\n", func(c Config) bool { return c.WebListenAddr == "[::1]:7777" }, ""},
		{"web on localhost", "web_listen_addr = \"localhost:8080\"\n", func(c Config) bool { return c.WebListenAddr == "localhost:8080" }, ""},
		{"web on all addresses", "web_listen_addr = \"0.0.0.0:7777\"\n", nil, `config: web_listen_addr "0.0.0.0:7777" is not a loopback address, so other hosts could reach the web UI: listen on 127.0.0.1, or set web_auth = "login"`},
		{"web on every interface", "web_listen_addr = \":7777\"\n", nil, `web_listen_addr ":7777" is not a loopback address`},
		{"web on a lan address", "web_listen_addr = \"192.168.1.5:7777\"\n", nil, "is not a loopback address"},
		{"web on a host name", "web_listen_addr = \"workstation:7777\"\n", nil, "is not a loopback address"},
		{"web on all addresses with logins", "web_listen_addr = \"0.0.0.0:7777\"\nweb_auth = \"login\"\n", func(c Config) bool { return c.WebAuth == "login" }, ""},
		{"web addr without port", "web_listen_addr = \"127.0.0.1\"\n", nil, `web_listen_addr "127.0.0.1" is not host:port`},
		{"web addr bad port", "web_listen_addr = \"127.0.0.1:http\"\n", nil, `"http" is not a port number`},
		{"bad web auth", "web_auth = \"none\"\n", nil, `web_auth "none" is not owner or login`},
		{"web roots", "web_file_roots = [\"/srv/images\"]\n", func(c Config) bool { return c.WebFileRootsSet() && len(c.WebFileRoots) == 1 }, ""},
		{"web roots off", "web_file_roots = []\n", func(c Config) bool { return c.WebFileRootsSet() && len(c.WebFileRoots) == 0 }, ""},
		{"relative web root", "web_file_roots = [\"images\"]\n", nil, `web_file_roots: "images" is not an absolute path`},
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

func TestDefaultsFor(t *testing.T) {
	root, user := DefaultsFor(0), DefaultsFor(1000)
	if len(root.DNSListen) != 1 || root.DNSListen[0] != "127.0.0.1:53" || root.BridgeDNSPort(0) != 53 {
		t.Errorf("DefaultsFor(0): dns_listen %v, bridge port %d; want [127.0.0.1:53], 53", root.DNSListen, root.BridgeDNSPort(0))
	}
	if len(user.DNSListen) != 0 || user.BridgeDNSPort(1000) != DefaultUserDNSPort {
		t.Errorf("DefaultsFor(1000): dns_listen %v, bridge port %d; want none, %d", user.DNSListen, user.BridgeDNSPort(1000), DefaultUserDNSPort)
	}
	if n := user.Names(1000); n.Bridge != "banger1000" || n.Table != "banger_u1000" {
		t.Errorf("DefaultsFor(1000).Names(1000) = %+v", n)
	}
	for _, c := range []Config{root, user} {
		if err := c.Validate(); err != nil {
			t.Errorf("defaults do not validate: %v", err)
		}
	}
}

func TestSafeDir(t *testing.T) {
	uid := os.Geteuid()
	dir := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private, open, groupRead := mk("private", 0o700), mk("open", 0o777), mk("groupread", 0o750)
	link := filepath.Join(dir, "link")
	os.Symlink(private, link)
	for _, tt := range []struct {
		dir     string
		private bool
		want    bool
	}{
		{private, true, true},
		{open, true, false},
		{open, false, false},
		{groupRead, true, false},
		{groupRead, false, true},
		{link, true, false},
		{filepath.Join(dir, "missing"), true, false},
	} {
		if got := safeDir(tt.dir, uid, tt.private); got != tt.want {
			t.Errorf("safeDir(%s, private=%v) = %v, want %v", filepath.Base(tt.dir), tt.private, got, tt.want)
		}
	}
	if safeDir(private, uid+4242, true) {
		t.Errorf("safeDir of a dir owned by another uid = true, want false")
	}
}

func TestDefaultPaths(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/s")
	t.Setenv("XDG_DATA_HOME", "relative/ignored")
	rt := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", rt)
	p := DefaultPaths()
	if p.Socket != rt+"/banger/bangerd.sock" {
		t.Errorf("DefaultPaths().Socket = %s, want it under XDG_RUNTIME_DIR %s", p.Socket, rt)
	}
	os.Chmod(rt, 0o777) // another user could swap the socket: not used
	if p := DefaultPaths(); strings.HasPrefix(p.Socket, rt) {
		t.Errorf("DefaultPaths().Socket = %s under a world-writable XDG_RUNTIME_DIR", p.Socket)
	}
	if p.DB != "/s/banger/banger.db" || p.Lock != "/s/banger/bangerd.lock" || strings.HasPrefix(p.DataDir, "relative") {
		t.Fatalf("DefaultPaths() = %+v", p)
	}
}

// Without XDG_RUNTIME_DIR a non-root user's runtime dir is
// $TMPDIR/banger-UID only when that is a private directory of theirs;
// one another user made (or left open to all) is never used, and the
// runtime dir falls back under the state dir.
func TestDefaultPathsTmpFallback(t *testing.T) {
	uid, asRoot := os.Geteuid(), os.Geteuid() == 0
	if asRoot {
		uid = 4242 // play a non-root user: root can give it directories
	}
	own := func(t *testing.T, dir string) {
		if asRoot {
			if err := os.Lchown(dir, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		prep   func(t *testing.T, dir string) // dir: $TMPDIR/banger-UID, not made yet
		used   bool                           // whether dir is used
		asUser bool                           // needs to run as uid itself (not root)
		asRoot bool                           // needs root (to make another user's dir)
	}{
		{"missing: made private and used", func(t *testing.T, dir string) {}, true, true, false},
		{"private and the user's", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); own(t, dir) }, true, false, false},
		{"the user's but 0777", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); os.Chmod(dir, 0o777); own(t, dir) }, false, false, false},
		{"the user's but readable by others", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); os.Chmod(dir, 0o755); own(t, dir) }, false, false, false},
		{"a symlink to a private dir of the user's", func(t *testing.T, dir string) {
			real := dir + ".real"
			os.Mkdir(real, 0o700)
			own(t, real)
			os.Symlink(real, dir)
		}, false, false, false},
		{"another user's, private", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); os.Lchown(dir, uid+1, uid+1) }, false, false, true},
		{"another user's, 0777", func(t *testing.T, dir string) {
			os.Mkdir(dir, 0o700)
			os.Chmod(dir, 0o777)
			os.Lchown(dir, uid+1, uid+1)
		}, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.asRoot {
				vmtest.RequireHost(t, "making a directory of another user's", vmtest.Root())
			}
			if tc.asUser && asRoot {
				t.Skip("the directory DefaultPaths makes is its caller's: as root that is not uid 4242's; run the tests as a non-root user for this case")
			}
			tmp, state := t.TempDir(), t.TempDir()
			t.Setenv("TMPDIR", tmp)
			t.Setenv("XDG_RUNTIME_DIR", "")
			t.Setenv("XDG_STATE_HOME", state)
			dir := filepath.Join(tmp, "banger-"+strconv.Itoa(uid))
			tc.prep(t, dir)
			p := defaultPaths(uid)
			want := filepath.Join(state, "banger", "run")
			if tc.used {
				want = filepath.Join(dir, "banger")
			}
			if p.RuntimeDir != want || p.Socket != filepath.Join(want, "bangerd.sock") {
				t.Errorf("defaultPaths(%d).RuntimeDir, Socket = %s, %s; want under %s", uid, p.RuntimeDir, p.Socket, want)
			}
		})
	}
}
