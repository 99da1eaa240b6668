package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
)

// localSSH is an "ssh" that runs the remote command here with sh, as the
// guest's login shell would, after checking the options vm cp must pass.
func localSSH(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "ssh")
	script := `#!/bin/sh
for a in "$@"; do last=$a; done
case " $* " in *" -T "*) ;; *) echo "fake ssh: no -T" >&2; exit 255;; esac
case " $* " in *" BatchMode=yes "*) ;; *) echo "fake ssh: no BatchMode" >&2; exit 255;; esac
case " $* " in *" StrictHostKeyChecking=yes "*) ;; *) echo "fake ssh: host key not checked" >&2; exit 255;; esac
exec sh -c "$last"
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGER_SSH", p)
}

func requireTar(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"sh", "tar", "du", "readlink", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("vm cp's guest side needs %s: %v", tool, err)
		}
	}
}

func TestCopyBothWays(t *testing.T) {
	requireTar(t)
	dir := isolate(t)
	localSSH(t, dir)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running", IP: "172.30.0.9"})
	src := filepath.Join(dir, "proj")
	os.MkdirAll(filepath.Join(src, "sub"), 0o750)
	os.WriteFile(filepath.Join(src, "sub", "a.txt"), []byte("alpha"), 0o640)
	os.Symlink("sub/a.txt", filepath.Join(src, "link"))
	guest := filepath.Join(dir, "guest")
	os.Mkdir(guest, 0o755)

	r := run(t, "--socket", f.Socket, "vm", "cp", "-r", "--json", src, "box:"+guest)
	var res cpResult
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil {
		t.Fatalf("vm cp -r to the vm = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if res.Direction != "to_vm" || res.Files != 1 || res.Dirs != 2 || res.Links != 1 || res.Bytes != 5 {
		t.Errorf("vm cp --json = %+v, want to_vm, 1 file, 2 dirs, 1 symlink, 5 bytes", res)
	}
	if b, _ := os.ReadFile(filepath.Join(guest, "proj", "sub", "a.txt")); string(b) != "alpha" {
		t.Errorf("guest copy of a.txt = %q", b)
	}

	back := filepath.Join(dir, "back:colon") // a host path with a colon, written with a slash
	r = run(t, "--socket", f.Socket, "vm", "cp", "-r", "box:"+filepath.Join(guest, "proj"), back)
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("vm cp -r from the vm = %d %q %q, want 0 and quiet", r.code, r.stdout, r.stderr)
	}
	fi, err := os.Stat(filepath.Join(back, "sub", "a.txt"))
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("copied back a.txt: %v, %v, want mode 0640", fi, err)
	}
	if l, _ := os.Readlink(filepath.Join(back, "link")); l != "sub/a.txt" {
		t.Errorf("copied back link -> %q", l)
	}
}

func TestCopyErrors(t *testing.T) {
	requireTar(t)
	dir := isolate(t)
	localSSH(t, dir)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running", IP: "172.30.0.9"})
	f.Add(rpc.VM{Name: "off", State: "stopped", IP: "172.30.0.10"})
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	j := func(p string) string { return filepath.Join(dir, p) }
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"stopped vm", []string{j("file"), "off:/tmp/"}, 1, "vm off is stopped, not running: start it with: banger vm start off"},
		{"stopped vm, from", []string{"off:/etc/hosts", j("new")}, 1, "banger vm start off"},
		{"unknown vm", []string{"a:b", j("new")}, 1, "a host path with a colon is written ./a:..."},
		{"missing host source", []string{j("nothere"), "box:" + dir}, 1, "nothere: no such file or directory"},
		{"missing guest source", []string{"box:" + j("nothere"), j("new")}, 1, "nothere: no such file or directory"},
		{"missing guest directory", []string{j("file"), "box:" + j("nodir/x")}, 1, "nodir: no such directory"},
		{"missing host directory", []string{"box:" + j("file"), j("nodir/x")}, 1, "nodir: no such directory"},
		{"directory without -r", []string{j("d"), "box:" + j("new")}, 1, "use -r"},
		{"guest directory without -r", []string{"box:" + j("d"), j("new")}, 1, "use -r"},
		{"one operand", []string{"box:/x"}, 2, "needs a source and a destination"},
		{"no vm side", []string{j("file"), j("new")}, 2, "neither side is in a VM"},
		{"two vms", []string{"box:/x", "off:/y"}, 2, "between the host and one VM"},
	}
	for _, tt := range tests {
		r := run(t, append([]string{"--socket", f.Socket, "vm", "cp"}, tt.args...)...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("%s: vm cp %q = %d %q, want %d and %q", tt.name, tt.args, r.code, r.stderr, tt.code, tt.want)
		}
		if _, err := os.Lstat(j("new")); err == nil {
			t.Errorf("%s: vm cp left %s behind", tt.name, j("new"))
		}
		if left, _ := filepath.Glob(j(".banger-cp*")); len(left) > 0 {
			t.Errorf("%s: vm cp left %q behind", tt.name, left)
		}
	}
}

func TestCleanGuestText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain\n", "plain"},
		{"tab\tand\nline", "tab\tand\nline"},
		{"esc\x1b[2Jclear", "esc?[2Jclear"},
		{"bad \xff utf8", "bad ? utf8"},
		{"bell\a", "bell?"},
		{strings.Repeat("x", 5000), strings.Repeat("x", 4096)},
	}
	for _, tt := range tests {
		if got := cleanGuestText(tt.in); got != tt.want {
			t.Errorf("cleanGuestText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCopyFailureMessages(t *testing.T) {
	tests := []struct {
		name, stderr string
		code         int
		want         string
	}{
		{"disk full", "tar: 0/big: Cannot write: No space left on device\nbanger-cp: receiving into /mnt failed\n", 3, "no space left on the guest's disk for /mnt: free some space (banger vm ssh box -- df -h)"},
		{"own message", "banger-cp: /x: no such file or directory\n", 3, "op: /x: no such file or directory"},
		{"host key", "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n", 255, "does not match the one bangerd pinned for box.vm"},
		{"ssh down", "ssh: connect to host 172.30.0.9 port 22: Connection refused\n", 255, "ssh failed: ssh: connect to host"},
		{"other", "tar: something odd\n", 2, "the guest side failed (exit 2): tar: something odd"},
	}
	for _, tt := range tests {
		werr := exec.Command("sh", "-c", "exit "+strconv.Itoa(tt.code)).Run()
		got := copyFailure("op", "box", "/mnt", werr, tt.stderr).Error()
		if !strings.Contains(got, tt.want) {
			t.Errorf("%s: copyFailure = %q, want it to say %q", tt.name, got, tt.want)
		}
	}
}

func TestSSHConfigCommand(t *testing.T) {
	dir := isolate(t)
	home := filepath.Join(dir, "home")
	t.Setenv("HOME", home)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "web", State: "running", IP: "172.30.0.3"})
	f.Add(rpc.VM{Name: "box", State: "stopped", IP: "172.30.0.9"})

	r := run(t, "--socket", f.Socket, "ssh-config")
	if r.code != 0 || strings.Index(r.stdout, "Host box box.vm\n") > strings.Index(r.stdout, "Host web web.vm\n") ||
		!strings.Contains(r.stdout, "  HostName 172.30.0.9\n  User root\n  IdentityFile /rt/id_ed25519\n  IdentitiesOnly yes\n  UserKnownHostsFile /state/known_hosts\n  StrictHostKeyChecking yes\n  HostKeyAlias box.vm\n") {
		t.Errorf("ssh-config = %d %q, want both VMs sorted with banger's key and pins", r.code, r.stdout)
	}
	r = run(t, "--socket", f.Socket, "ssh-config", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "Host web web.vm") || strings.Contains(r.stdout, "box") {
		t.Errorf("ssh-config web = %d %q, want web alone", r.code, r.stdout)
	}
	if r := run(t, "--socket", f.Socket, "ssh-config", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "nosuch") {
		t.Errorf("ssh-config nosuch = %d %q, want an error", r.code, r.stderr)
	}
	if r := run(t, "--socket", f.Socket, "ssh-config", "--install", "--uninstall"); r.code != 2 {
		t.Errorf("ssh-config --install --uninstall = %d, want 2", r.code)
	}
	if r := run(t, "--socket", f.Socket, "ssh-config", "--install", "web"); r.code != 2 {
		t.Errorf("ssh-config --install web = %d, want 2", r.code)
	}

	user := filepath.Join(home, ".ssh", "config")
	managed := filepath.Join(dir, "state", "banger", "ssh_config")
	os.MkdirAll(filepath.Dir(user), 0o700)
	mine := "Host *\r\n  ServerAliveInterval 30" // CRLF, no trailing newline
	os.WriteFile(user, []byte(mine), 0o600)
	for i := 0; i < 2; i++ {
		if r := run(t, "--socket", f.Socket, "ssh-config", "--install"); r.code != 0 {
			t.Fatalf("ssh-config --install = %d %q", r.code, r.stderr)
		}
	}
	b, _ := os.ReadFile(user)
	if want := "Include " + managed + "\r\n" + mine; string(b) != want {
		t.Errorf("~/.ssh/config after --install twice = %q, want %q", b, want)
	}
	if b, _ := os.ReadFile(managed); !strings.Contains(string(b), "Host web web.vm") || !strings.Contains(string(b), "Host box box.vm") {
		t.Errorf("%s = %q, want both VMs", managed, b)
	}

	// banger's own create and delete keep the installed file current.
	if r := run(t, "--socket", f.Socket, "vm", "create", "new"); r.code != 0 {
		t.Fatalf("vm create new = %d %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(managed); !strings.Contains(string(b), "Host new new.vm") {
		t.Errorf("after vm create new, %s = %q", managed, b)
	}
	if r := run(t, "--socket", f.Socket, "vm", "delete", "--force", "web"); r.code != 0 {
		t.Fatalf("vm delete web = %d %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(managed); strings.Contains(string(b), "Host web") {
		t.Errorf("after vm delete web, %s = %q", managed, b)
	}

	if r := run(t, "--socket", f.Socket, "ssh-config", "--uninstall"); r.code != 0 {
		t.Fatalf("ssh-config --uninstall = %d %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(user); string(b) != mine {
		t.Errorf("~/.ssh/config after --uninstall = %q, want the user's own %q", b, mine)
	}
	if fi, _ := os.Stat(user); fi.Mode().Perm() != 0o600 {
		t.Errorf("~/.ssh/config mode = %v, want 0600", fi.Mode().Perm())
	}
	if _, err := os.Stat(managed); err == nil {
		t.Errorf("--uninstall left %s", managed)
	}
	// Not installed: creates no file.
	if r := run(t, "--socket", f.Socket, "vm", "create", "other"); r.code != 0 {
		t.Fatalf("vm create other = %d", r.code)
	}
	if _, err := os.Stat(managed); err == nil {
		t.Errorf("vm create wrote %s without --install", managed)
	}
}

func TestCopyBar(t *testing.T) {
	var buf bytes.Buffer
	b := &copyBar{w: &buf, on: true, label: "copying to box:/root/", total: 100 << 20, start: time.Now().Add(-2 * time.Second),
		stop: make(chan struct{}), stopped: make(chan struct{})}
	close(b.stopped)
	b.Add(50 << 20)
	b.mu.Lock()
	b.draw()
	b.mu.Unlock()
	b.Close(true)
	b.Summary(100 << 20)
	out := buf.String()
	for _, want := range []string{"\r\033[Kcopying to box:/root/  50% [████████████············] 50M/100M 2", "M/s\r", "\r\033[Kcopied 100M in 2."} {
		if !strings.Contains(out, want) {
			t.Errorf("copy bar output %q lacks %q", out, want)
		}
	}
	// Not on a terminal (or -q, --json): nothing at all.
	buf.Reset()
	q := (&app{stderr: &buf}).newCopyBar(cpOptions{}, "copying", 10)
	q.Add(10)
	q.Close(true)
	q.Summary(10)
	if buf.Len() != 0 {
		t.Errorf("copy bar off a terminal wrote %q", buf.String())
	}
}
