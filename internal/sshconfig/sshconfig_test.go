package sshconfig

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const inc = "Include /home/u/.local/state/banger/ssh_config"

func TestAddInclude(t *testing.T) {
	tests := []struct {
		name, in, want string
		changed        bool
	}{
		{"missing or empty file", "", inc + "\n", true},
		{"plain config", "Host a\n  User x\n", inc + "\nHost a\n  User x\n", true},
		{"no trailing newline", "Host a\n  User x", inc + "\nHost a\n  User x", true},
		{"CRLF", "Host a\r\n  User x\r\n", inc + "\r\nHost a\r\n  User x\r\n", true},
		{"comment first", "# mine\nHost *\n", inc + "\n# mine\nHost *\n", true},
		{"already first", inc + "\nHost a\n", inc + "\nHost a\n", false},
		{"already, moved by the user", "Host a\n" + inc + "\n", "Host a\n" + inc + "\n", false},
		{"already, CRLF and indented", "  " + inc + "\r\n", "  " + inc + "\r\n", false},
		{"another Include", "Include ~/.ssh/other\n", inc + "\nInclude ~/.ssh/other\n", true},
	}
	for _, tt := range tests {
		got, changed := AddInclude([]byte(tt.in), inc)
		if string(got) != tt.want || changed != tt.changed {
			t.Errorf("%s: AddInclude(%q) = %q, %v, want %q, %v", tt.name, tt.in, got, changed, tt.want, tt.changed)
		}
	}
}

func TestRemoveInclude(t *testing.T) {
	tests := []struct {
		name, in, want string
		changed        bool
	}{
		{"empty", "", "", false},
		{"not there", "Host a\n", "Host a\n", false},
		{"first", inc + "\nHost a\n", "Host a\n", true},
		{"only line", inc + "\n", "", true},
		{"CRLF", inc + "\r\nHost a\r\n", "Host a\r\n", true},
		{"last without newline", "Host a\n" + inc, "Host a\n", true},
		{"twice", inc + "\nHost a\n" + inc + "\n", "Host a\n", true},
		{"similar lines stay", "Include /home/u/other\n#" + inc + "\n" + inc + "x\n", "Include /home/u/other\n#" + inc + "\n" + inc + "x\n", false},
	}
	for _, tt := range tests {
		got, changed := RemoveInclude([]byte(tt.in), inc)
		if string(got) != tt.want || changed != tt.changed {
			t.Errorf("%s: RemoveInclude(%q) = %q, %v, want %q, %v", tt.name, tt.in, got, changed, tt.want, tt.changed)
		}
	}
}

func TestRender(t *testing.T) {
	got := string(Render([]Host{
		{Name: "testbox", IP: "172.30.0.2", User: "root", KeyPath: "/b/id_ed25519", KnownHosts: "/s/known_hosts", HostKeyAlias: "testbox.vm"},
		{Name: "odd", IP: "172.30.0.3", KeyPath: "/my keys/100%/id", KnownHosts: `/s/"q"/kh`},
	}))
	want := Header + `
Host testbox testbox.vm
  HostName 172.30.0.2
  User root
  IdentityFile /b/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile /s/known_hosts
  StrictHostKeyChecking yes
  HostKeyAlias testbox.vm
  UpdateHostKeys no
  CheckHostIP no

Host odd odd.vm
  HostName 172.30.0.3
  User root
  IdentityFile "/my keys/100%%/id"
  IdentitiesOnly yes
  UserKnownHostsFile "/s/\"q\"/kh"
  StrictHostKeyChecking yes
  HostKeyAlias odd.vm
  UpdateHostKeys no
  CheckHostIP no
`
	if got != want {
		t.Errorf("Render = \n%s\nwant\n%s", got, want)
	}
	if got := IncludeLine("/a b/c"); got != `Include "/a b/c"` {
		t.Errorf("IncludeLine(/a b/c) = %s", got)
	}
}

// TestRenderParsedBySSH has the real ssh client read the rendered blocks
// through an Include at the top of a user config, under both names (ssh -G
// shows paths before expanding their %-tokens).
func TestRenderParsedBySSH(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("needs the ssh client (apt-get install openssh-client)")
	}
	dir := t.TempDir()
	managed := filepath.Join(dir, "state dir", "ssh_config")
	os.MkdirAll(filepath.Dir(managed), 0o700)
	key := filepath.Join(dir, "id 100%")
	os.WriteFile(managed, Render([]Host{{Name: "testbox", IP: "172.30.0.2", KeyPath: key, KnownHosts: filepath.Join(dir, "known_hosts")}}), 0o600)
	user := filepath.Join(dir, "config")
	// The user's own settings for every host come after the Include and
	// must not override banger's, and must still apply to other hosts.
	os.WriteFile(user, []byte("Host *\n  User alice\n  StrictHostKeyChecking accept-new\n"), 0o600)
	if _, err := Install(user, IncludeLine(managed)); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"testbox", "testbox.vm"} {
		out, err := exec.Command("ssh", "-F", user, "-G", host).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -G %s: %v: %s", host, err, out)
		}
		for _, want := range []string{"hostname 172.30.0.2", "user root", "identityfile " + strings.ReplaceAll(key, "%", "%%"), "identitiesonly yes",
			"userknownhostsfile " + filepath.Join(dir, "known_hosts"), "stricthostkeychecking true", "hostkeyalias testbox.vm"} {
			if !strings.Contains(string(out), "\n"+want+"\n") {
				t.Errorf("ssh -G %s lacks %q:\n%s", host, want, out)
			}
		}
	}
	out, _ := exec.Command("ssh", "-F", user, "-G", "elsewhere").CombinedOutput()
	if !strings.Contains(string(out), "\nuser alice\n") || strings.Contains(string(out), "hostkeyalias") {
		t.Errorf("the user's own Host * no longer applies to other hosts:\n%s", out)
	}
}

func TestInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		before *string // nil: no file
		mode   os.FileMode
	}{
		{"missing file and directory", nil, 0},
		{"existing 0600", ptr("Host a\n  User x\n"), 0o600},
		{"existing 0644 keeps its mode", ptr("Host a\r\n  User x\r\n"), 0o644},
		{"no trailing newline", ptr("Host a"), 0o600},
		{"already installed", ptr(inc + "\n"), 0o600},
	}
	for i, tt := range tests {
		path := filepath.Join(dir, string(rune('a'+i)), ".ssh", "config")
		if tt.before != nil {
			os.MkdirAll(filepath.Dir(path), 0o700)
			os.WriteFile(path, []byte(*tt.before), tt.mode)
			os.Chmod(path, tt.mode)
		}
		for n := 0; n < 2; n++ { // idempotent
			if _, err := Install(path, inc); err != nil {
				t.Fatalf("%s: Install: %v", tt.name, err)
			}
		}
		got, _ := os.ReadFile(path)
		if c := strings.Count(string(got), inc); c != 1 || !strings.HasPrefix(string(got), inc) {
			t.Errorf("%s: after Install twice the config is %q, want one Include first", tt.name, got)
		}
		wantMode := tt.mode
		if tt.before == nil {
			wantMode = 0o600
			if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: made %s with mode %v, want 0700", tt.name, filepath.Dir(path), fi.Mode().Perm())
			}
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != wantMode {
			t.Errorf("%s: config mode = %v, want %v", tt.name, fi.Mode().Perm(), wantMode)
		}
		if _, err := Uninstall(path, inc); err != nil {
			t.Fatalf("%s: Uninstall: %v", tt.name, err)
		}
		got, _ = os.ReadFile(path)
		want := ""
		if tt.before != nil && *tt.before != inc+"\n" {
			want = *tt.before
		}
		if string(got) != want {
			t.Errorf("%s: after Uninstall the config is %q, want %q", tt.name, got, want)
		}
	}
	if changed, err := Uninstall(filepath.Join(dir, "none", "config"), inc); changed || err != nil {
		t.Errorf("Uninstall of a missing file = %v, %v, want no change", changed, err)
	}
}

func TestInstallThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "dotfiles", "ssh_config")
	os.MkdirAll(filepath.Dir(real), 0o700)
	os.WriteFile(real, []byte("Host a\n"), 0o600)
	link := filepath.Join(dir, ".ssh", "config")
	os.MkdirAll(filepath.Dir(link), 0o700)
	os.Symlink(real, link)
	if _, err := Install(link, inc); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("Install replaced the symlink %s with a file", link)
	}
	if b, _ := os.ReadFile(real); string(b) != inc+"\nHost a\n" {
		t.Errorf("the symlink's target = %q", b)
	}
	os.Remove(real)
	if _, err := Install(link, inc); err == nil || !strings.Contains(err.Error(), "symlink to a missing file") {
		t.Errorf("Install through a dangling symlink = %v, want a refusal", err)
	}
}

func ptr(s string) *string { return &s }
