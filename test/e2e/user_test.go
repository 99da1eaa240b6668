package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/vmtest"
)

// debianUserPATH is Debian's default PATH for ordinary users: no /usr/sbin,
// where ip, nft, debugfs and mkfs.ext4 live.
const debianUserPATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"

// testUser is an ordinary account a test creates (useradd) with a sudoers
// rule of its own, and removes afterwards.
type testUser struct {
	Name     string
	UID, GID int
	Home     string
}

// newTestUser creates a user; sudoers is the body of its rule in
// /etc/sudoers.d ("%u" stands for its name), "" for none.
func newTestUser(t testing.TB, sudoers string) *testUser {
	t.Helper()
	vmtest.Require(t, "a test with a user account of its own", vmtest.Root(), vmtest.Tool("useradd", "passwd"))
	b := make([]byte, 3)
	rand.Read(b)
	name := "bgu" + hex.EncodeToString(b)
	if out, err := vmtest.Command("useradd", "--create-home", "--shell", "/bin/bash", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	rule := filepath.Join("/etc/sudoers.d", name)
	t.Cleanup(func() {
		os.Remove(rule)
		exec.Command("pkill", "-KILL", "-u", name).Run()
		if out, err := vmtest.Command("userdel", "--remove", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	tu := &testUser{Name: name, Home: u.HomeDir}
	tu.UID, _ = strconv.Atoi(u.Uid)
	tu.GID, _ = strconv.Atoi(u.Gid)
	if sudoers != "" {
		if err := os.WriteFile(rule, []byte(strings.ReplaceAll(sudoers, "%u", name)+"\n"), 0o440); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("visudo", "-cf", rule).CombinedOutput(); err != nil {
			t.Fatalf("sudoers rule %s: %v: %s", rule, err, out)
		}
	}
	return tu
}

// environ is a login-like environment for the user, with Debian's PATH.
func (u *testUser) environ() []string {
	return []string{"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "PATH=" + debianUserPATH, "LANG=C.UTF-8"}
}

// own gives the user the tree at dir.
func (u *testUser) own(t testing.TB, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.UID, u.GID)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// bundleView makes the user a bundle of their own at dir: links to the
// shared bundle's files, and a copy of its SSH key pair that they own (the
// key is private, 0600, so the shared one is root's alone).
func (u *testUser) bundleView(t testing.TB, shared, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(shared)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		src, dst := filepath.Join(shared, e.Name()), filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), "id_ed25519") {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.Symlink(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// openTUN makes /dev/net/tun usable by ordinary users, as Debian's udev
// does (mode 0666), for the test; this machine's may be root's alone.
func openTUN(t testing.TB) {
	fi, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Fatalf("no /dev/net/tun: %v", err)
	}
	if fi.Mode().Perm() == 0o666 {
		return
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod("/dev/net/tun", fi.Mode().Perm()) })
}

// vmSudoers lets a user run exactly what bangerd runs as root for VMs, by
// the paths 'banger sudoers' names (on Debian, ip is /usr/bin/ip for a user).
const vmSudoers = "%u ALL=(root) NOPASSWD: /usr/bin/ip, /usr/sbin/ip, /usr/sbin/nft, /usr/sbin/sysctl"

// TestOrdinaryUser runs the lifecycle, networking and DNS as an ordinary
// user with exactly banger's sudoers rule, in a namespace where root's
// bangerd ran first and left its bridge, pool devices, tables and a VM
// behind, plus a root-owned device squatting on the user's own pool name.
func TestOrdinaryUser(t *testing.T) {
	openTUN(t)
	// Root's daemon, with a VM that keeps running after it stops.
	rootEnv := newEnvConfig(t, defaultConfig+"tap_pool_size = 2\n")
	rootEnv.create("rootbox", "--image", "minimal")
	rootEnv.client().Shutdown(context.Background())
	u := newTestUser(t, vmSudoers)
	names := network.NamesFor(u.UID)
	squat := names.PoolPrefix + "0"
	if out, err := vmtest.Command("ip", "-n", rootEnv.ns.Name, "tuntap", "add", "dev", squat, "mode", "tap", "user", "0", "group", "0").CombinedOutput(); err != nil {
		t.Fatalf("adding a root-owned %s: %v: %s", squat, err, out)
	}
	rootTables := nftTables(t, rootEnv)
	rootLinks := rootEnv.links()

	up := newUpstreamIn(t, rootEnv.ns)
	e := newEnvWith(t, envOpts{ns: rootEnv.ns, user: u, config: "dns_upstreams = []\ntap_pool_size = 2\nwarm_after_create = false\n"})

	if out, errOut, err := e.banger(context.Background(), "doctor"); err != nil || !strings.Contains(out, "[ok  ] sudo") {
		t.Errorf("banger doctor as %s: %v\n%s\n%s", u.Name, err, out, errOut)
	}
	start := time.Now()
	vm := e.create("u1", "--image", "minimal")
	t.Logf("%s created u1 at %s in %v (stages %+v)", u.Name, vm.IP, time.Since(start).Round(time.Millisecond), vm.Stages)
	if !(strings.HasPrefix(vm.TAP, names.TAPPrefix) || strings.HasPrefix(vm.TAP, names.PoolPrefix) && vm.TAP != squat) || !names.Subnet.Contains(mustAddr(t, vm.IP)) {
		t.Errorf("u1 has tap %s, ip %s; want one of the user's own (%s*, %s* but %s) and %s", vm.TAP, vm.IP, names.TAPPrefix, names.PoolPrefix, squat, names.Subnet)
	}
	if got := strings.TrimSpace(e.ssh("u1", "hostname")); got != "u1" {
		t.Fatalf("hostname = %q", got)
	}
	e.ssh("u1", "sh", "-c", "'echo keep-me > /root/marker && sync'")

	t.Run("files are the user's alone", func(t *testing.T) {
		checkPrivate(t, e.with(t), u)
	})

	t.Run(".vm from the host and from the guest", func(t *testing.T) {
		e := e.with(t)
		gw := names.Gateway().String()
		for _, proto := range []string{"udp", "tcp"} {
			r := queryAt(t, e, gw+":53", proto, "u1.vm")
			if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != vm.IP {
				t.Errorf("host query (%s) of u1.vm at %s:53 = %v, want %s", proto, gw, r, vm.IP)
			}
		}
		if got := e.ssh("u1", "getent", "hosts", "u1.vm"); !strings.Contains(got, vm.IP) {
			t.Errorf("guest resolves u1.vm as %q, want %s", got, vm.IP)
		}
		if out, _, err := e.banger(context.Background(), "vm", "ssh", "u1", "--", "getent", "hosts", "rootbox.vm"); err == nil {
			t.Errorf("guest of %s resolves root's rootbox.vm as %q: daemons must not share names", u.Name, out)
		}
	})

	t.Run("nat", func(t *testing.T) {
		e := e.with(t)
		if _, _, err := e.banger(context.Background(), "vm", "ssh", "u1", "--", fetch); err == nil {
			t.Fatalf("u1 reached the upstream without NAT")
		}
		e.must("vm", "set", "--nat", "u1")
		if out := e.ssh("u1", fetch); !strings.Contains(out, "hello-from-upstream") {
			t.Fatalf("fetch through NAT = %q", out)
		}
		if seen := up.requests(); len(seen) == 0 || !strings.HasPrefix(seen[len(seen)-1], "192.0.2.2:") {
			t.Errorf("upstream saw %v, want the masqueraded 192.0.2.2", seen)
		}
		if got := natRulesOf(t, e, names.Table); !strings.Contains(got, vm.IP) {
			t.Errorf("table ip %s lacks u1's rules:\n%s", names.Table, got)
		}
		// An egress policy, applied through the same sudo rule and DNS
		// redirect: a list without the upstream closes it, open reopens it.
		e.must("vm", "set", "--egress-allow", "198.51.100.0/24,allowed.test", "u1")
		if _, _, err := e.banger(context.Background(), "vm", "ssh", "u1", "--", fetch); err == nil {
			t.Errorf("u1 reached the upstream past an allow list that does not name it")
		}
		if out, _, err := e.banger(context.Background(), "vm", "ssh", "u1", "--", "getent", "hosts", "outside.example"); err == nil {
			t.Errorf("u1 resolved a name its allow list does not name: %q", out)
		}
		e.must("vm", "set", "--egress-open", "u1")
		if out := e.ssh("u1", fetch); !strings.Contains(out, "hello-from-upstream") {
			t.Fatalf("fetch after --egress-open = %q", out)
		}
	})

	t.Run("stop and start keep /root", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "stop", "u1")
		if got, _ := e.show("u1"); got.State != "stopped" || contains(e.links(), vm.TAP) {
			t.Fatalf("after stop: %s, tap %s present: %v", got.State, vm.TAP, contains(e.links(), vm.TAP))
		}
		e.must("vm", "start", "u1")
		if got := strings.TrimSpace(e.ssh("u1", "cat", "/root/marker")); got != "keep-me" {
			t.Fatalf("marker after stop/start = %q", got)
		}
	})

	t.Run("delete leaves nothing of the user's and touches nothing of root's", func(t *testing.T) {
		e := e.with(t)
		got, _ := e.show("u1")
		e.must("vm", "delete", "--force", "u1")
		for _, l := range e.links() {
			if strings.HasPrefix(l, names.TAPPrefix) {
				t.Errorf("%s left after delete", l)
			}
		}
		if _, err := os.Stat(got.Dir); !os.IsNotExist(err) {
			t.Errorf("VM dir %s after delete: %v", got.Dir, err)
		}
		if got := natRulesOf(t, e, names.Table); strings.Contains(got, vm.IP) {
			t.Errorf("NAT rules of u1 left after delete:\n%s", got)
		}
		links := e.links()
		for _, l := range rootLinks {
			if !contains(links, l) {
				t.Errorf("root's %s is gone after the user's daemon ran", l)
			}
		}
		if owner := tapOwner(t, e, squat); owner != "root" && owner != "0" {
			t.Errorf("the root-owned %s now belongs to %q", squat, owner)
		}
		after := nftTables(t, e)
		for fam, listing := range rootTables {
			if after[fam] != listing {
				t.Errorf("root's nft table %s changed:\nbefore:\n%s\nafter:\n%s", fam, listing, after[fam])
			}
		}
	})

	// Root's VM survived all of it; root's next bangerd adopts it.
	rootEnv.startDaemon()
	if got := strings.TrimSpace(rootEnv.ssh("rootbox", "hostname")); got != "rootbox" {
		t.Errorf("root's VM after the user's daemon ran: hostname %q", got)
	}
}

// TestSudoWouldPrompt runs bangerd as a user whose sudo asks for a password:
// a create is refused with one clear message before anything changes.
func TestSudoWouldPrompt(t *testing.T) {
	openTUN(t)
	u := newTestUser(t, "%u ALL=(ALL) ALL")
	e := newEnvWith(t, envOpts{user: u})
	before := e.links()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, stderr, err := e.banger(ctx, "vm", "create", "--name", "nope", "--image", "minimal")
	if err == nil || !strings.Contains(stderr, "sudo would ask for a password") || !strings.Contains(stderr, "banger sudoers") {
		t.Fatalf("create with a prompting sudo: %v, stderr %q; want the sudo message and the fix", err, stderr)
	}
	if strings.Count(stderr, "password") > 2 {
		t.Errorf("the sudo message is repeated:\n%s", stderr)
	}
	if vms, err := e.client().ListVMs(ctx); err != nil || len(vms) != 0 {
		t.Errorf("VMs after the refusal: %+v, %v", vms, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "data", "banger", "vms")); len(ents) != 0 {
		t.Errorf("VM dirs after the refusal: %d", len(ents))
	}
	if after := e.links(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("links changed by the refusal: %v -> %v", before, after)
	}
	out, _, err := e.banger(ctx, "doctor")
	var ee *exec.ExitError
	if !asExit(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "[FAIL] sudo") || !strings.Contains(out, "banger sudoers") {
		t.Errorf("doctor with a prompting sudo: %v\n%s", err, out)
	}
}

// checkPrivate walks the daemon's state, data and runtime dirs: every
// directory is 0700, every file and socket is the user's with no access for
// group or others, and another local user reads nothing.
func checkPrivate(t *testing.T, e *env, u *testUser) {
	for _, dir := range []string{filepath.Join(e.root, "state", "banger"), filepath.Join(e.root, "data", "banger"), filepath.Join(e.root, "run", "banger")} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Errorf("walking %s: %v", p, err)
				return nil
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return nil // gone meanwhile
			}
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != u.UID {
				t.Errorf("%s belongs to uid %d, want %s's %d", p, st.Uid, u.Name, u.UID)
			}
			mode := fi.Mode()
			switch {
			case mode.IsDir() && mode.Perm()&0o077 != 0:
				t.Errorf("directory %s has mode %o, want 0700", p, mode.Perm())
			case mode&fs.ModeSocket != 0 && mode.Perm()&0o022 != 0:
				t.Errorf("socket %s has mode %o: others may connect", p, mode.Perm())
			case mode.IsRegular() && mode.Perm()&0o077 != 0:
				t.Errorf("file %s has mode %o, want no access for group or others", p, mode.Perm())
			}
			return nil
		})
	}
	other := newTestUser(t, "")
	for _, f := range []string{filepath.Join(e.root, "state", "banger", "banger.db"), filepath.Join(e.root, "state", "banger", "known_hosts")} {
		cmd := exec.Command("runuser", "-u", other.Name, "--", "cat", f)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("another user read %s: %q", f, out)
		}
	}
}

// queryAt asks addr for name over proto from inside e's namespace.
func queryAt(t *testing.T, e *env, addr, proto, name string) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	var resp *mdns.Msg
	err := e.ns.Do(func() error {
		var err error
		resp, _, err = (&mdns.Client{Net: proto, Timeout: 3 * time.Second}).Exchange(m, addr)
		return err
	})
	if err != nil {
		t.Fatalf("querying %s at %s over %s: %v", name, addr, proto, err)
	}
	return resp
}

// nftTables lists every nft table in e's namespace, by "family name".
func nftTables(t *testing.T, e *env) map[string]string {
	t.Helper()
	out, err := vmtest.Command("ip", "netns", "exec", e.ns.Name, "nft", "list", "tables").Output()
	if err != nil {
		t.Fatalf("nft list tables: %v", err)
	}
	tables := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		listing, _ := vmtest.Command("ip", "netns", "exec", e.ns.Name, "nft", "list", "table", f[1], f[2]).Output()
		tables[f[1]+" "+f[2]] = string(listing)
	}
	return tables
}

// natRulesOf lists the NAT table of the given name in e's namespace.
func natRulesOf(t *testing.T, e *env, table string) string {
	out, _ := vmtest.Command("ip", "netns", "exec", e.ns.Name, "nft", "list", "table", "ip", table).CombinedOutput()
	return string(out)
}

// tapOwner is the owner ip reports for a TAP device.
func tapOwner(t *testing.T, e *env, dev string) string {
	out, err := vmtest.Command("ip", "-n", e.ns.Name, "-d", "link", "show", "dev", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", dev, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "user" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("address %q: %v", s, err)
	}
	return a
}

func asExit(err error, ee **exec.ExitError) bool { return errors.As(err, ee) }
