package hostkey

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ssh_host_ed25519_key")
	wrote, err := Ensure(path, "root@vm1")
	if err != nil || !wrote {
		t.Fatalf("Ensure(new) = %v, %v; want true, nil", wrote, err)
	}
	priv, _ := os.ReadFile(path)
	pub, _ := os.ReadFile(path + ".pub")
	key, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatalf("parsing the private key: %v", err)
	}
	pk, comment, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil || comment != "root@vm1" || pk.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("public key %q: %v, comment %q; want an ed25519 key with comment root@vm1", pub, err, comment)
	}
	if !bytes.Equal(pk.Marshal(), key.PublicKey().Marshal()) {
		t.Errorf("public key %q does not match the private key", pub)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, path + ".pub": 0o644} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("mode of %s = %v, %v; want %v", p, fi.Mode(), err, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// An existing key is kept.
	if wrote, err := Ensure(path, "other"); err != nil || wrote {
		t.Errorf("Ensure(existing) = %v, %v; want false, nil", wrote, err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, priv) {
		t.Errorf("Ensure replaced an existing key")
	}

	// A lost public key is derived from the private key.
	os.Remove(path + ".pub")
	if wrote, err := Ensure(path, "root@vm1"); err != nil || !wrote {
		t.Fatalf("Ensure(no .pub) = %v, %v; want true, nil", wrote, err)
	}
	if again, _ := os.ReadFile(path + ".pub"); !bytes.Equal(again, pub) {
		t.Errorf("derived public key = %q, want %q", again, pub)
	}

	// ssh-keygen reads the key as its own.
	if kg, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command(kg, "-y", "-f", path).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(pub), strings.TrimSpace(string(out))) {
			t.Errorf("ssh-keygen -y -f key = %q, %v; want %q", out, err, pub)
		}
	}
}

func TestEnsureErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := Ensure(bad, ""); err == nil || !strings.Contains(err.Error(), "derive its public key") {
		t.Errorf("Ensure(garbage without .pub) = %v, want an error saying it cannot derive the public key", err)
	}
	if _, err := Ensure(filepath.Join(dir, "missing-dir", "key"), ""); err == nil || !strings.Contains(err.Error(), "writing") {
		t.Errorf("Ensure(in a missing directory) = %v, want a writing error", err)
	}
}

func TestComment(t *testing.T) {
	host, _ := os.Hostname()
	tests := []struct{ cmdline, want string }{
		{"console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1 rw", "root@vm1"},
		{"ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off", "root@" + host},
		{"console=ttyS0", "root@" + host},
	}
	for _, tt := range tests {
		if got := Comment(tt.cmdline); got != tt.want {
			t.Errorf("Comment(%q) = %q, want %q", tt.cmdline, got, tt.want)
		}
	}
}
