package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRuntime writes a small but consistent bundle and returns its directory.
func fakeRuntime(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "runtime")
	files := map[string]string{
		"vmlinux":             "ELF kernel",
		"vmlinuz":             "bzImage",
		"kernel.config":       "CONFIG_EXT4_FS=y\n",
		"initrd.img":          "initrd",
		"rootfs-docker.ext4":  "docker image",
		"rootfs-minimal.ext4": "minimal image",
		"work-seed.ext4":      "seed",
		"banger-vsock-agent":  "agent",
		"id_ed25519":          "private key",
		"id_ed25519.pub":      "ssh-ed25519 AAAA test",
	}
	var artifacts []string
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "id_ed25519") {
			sum := sha256.Sum256([]byte(content))
			artifacts = append(artifacts, fmt.Sprintf(`{"path": %q, "sha256": %q, "size": %d}`, name, hex.EncodeToString(sum[:]), len(content)))
		}
	}
	manifest := `{
  "schema": 1, "kernel_version": "6.1.0-99-cloud-amd64",
  "kernel": "vmlinux", "vmlinuz": "vmlinuz", "kernel_config": "kernel.config", "initrd": "initrd.img",
  "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "ssh_key": "id_ed25519",
  "agent": "banger-vsock-agent", "default_image": "docker",
  "images": [
    {"name": "docker", "rootfs": "rootfs-docker.ext4", "work_seed": "work-seed.ext4", "description": "the big one"},
    {"name": "minimal", "rootfs": "rootfs-minimal.ext4", "work_seed": "work-seed.ext4"}
  ],
  "artifacts": [` + strings.Join(artifacts, ",\n") + `]
}`
	if err := os.WriteFile(filepath.Join(dir, "bundle.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// isolateRuntime keeps the user's config and bundles out of the test.
func isolateRuntime(t *testing.T) {
	t.Helper()
	isolate(t)
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("BANGER_RUNTIME", "")
}

func TestRuntimeShow(t *testing.T) {
	isolateRuntime(t)
	dir := fakeRuntime(t)
	t.Setenv("BANGER_RUNTIME", dir)

	r := run(t, "runtime", "show")
	if r.code != 0 {
		t.Fatalf("runtime show exit code = %d, want 0", r.code)
	}
	for _, want := range []string{"bundle:      " + dir, "6.1.0-99-cloud-amd64", "docker (default): the big one", "minimal", "check:       ok (8 artifacts"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("runtime show stdout lacks %q", want)
		}
	}

	r = run(t, "runtime", "show", "--json", "--verify", "--runtime", dir)
	var s runtimeShow
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || r.code != 0 {
		t.Fatalf("runtime show --json = %d, %v, want 0 and JSON", r.code, err)
	}
	if !s.OK || !s.Verified || s.Dir != dir || len(s.Images) != 2 || s.DefaultImage != "docker" {
		t.Errorf("runtime show --json = %+v, want ok, verified, dir %s, 2 images, default docker", s, dir)
	}

	// Same size, other content: only --verify notices.
	if err := os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("BZIMAGE"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "runtime", "show"); r.code != 0 {
		t.Errorf("runtime show after a same-size change = %d, want 0", r.code)
	}
	r = run(t, "runtime", "show", "--verify")
	if r.code != 1 || !strings.Contains(r.stderr, "vmlinuz: sha256 is") || !strings.Contains(r.stdout, "FAILED") {
		t.Errorf("runtime show --verify after a change = %d, want 1 with the vmlinuz sha256 error", r.code)
	}
	r = run(t, "runtime", "show", "--verify", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || r.code != 1 || s.OK || !strings.Contains(s.Error, "vmlinuz") {
		t.Errorf("runtime show --verify --json after a change = %d, %+v, want 1 and ok=false", r.code, s)
	}
}

func TestRuntimeShowNotFound(t *testing.T) {
	isolateRuntime(t)
	t.Chdir(t.TempDir())
	r := run(t, "runtime", "show")
	if r.code != 1 || !strings.Contains(r.stderr, "make runtime-bundle") || !strings.Contains(r.stderr, "BANGER_RUNTIME") {
		t.Errorf("runtime show without a bundle = %d, %q, want 1 and how to get one", r.code, r.stderr)
	}
}

func TestRuntimeDist(t *testing.T) {
	isolateRuntime(t)
	dir := fakeRuntime(t)
	out := filepath.Join(t.TempDir(), "dist")
	r := run(t, "runtime", "dist", "--runtime", dir, "--out", out)
	if r.code != 0 {
		t.Fatalf("runtime dist = %d, want 0", r.code)
	}
	for _, f := range []string{"runtime-bundle.toml", "banger-runtime-6.1.0-99-cloud-amd64.tar.gz"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("runtime dist did not write %s: %v", f, err)
		}
	}
	if !strings.Contains(r.stdout, "banger runtime install --manifest "+filepath.Join(out, "runtime-bundle.toml")) {
		t.Errorf("runtime dist stdout = %q, want the install command", r.stdout)
	}
}

func TestRuntimeUsageErrors(t *testing.T) {
	isolateRuntime(t)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"runtime", "install"}, 2, "needs --manifest FILE"},
		{[]string{"runtime", "install", "--manifest", "../../config/runtime-bundle.toml", "--out", t.TempDir()}, 1, "this is the template"},
		{[]string{"runtime", "build", "--image", "alpine"}, 2, `--image "alpine": use docker or minimal`},
		{[]string{"runtime", "build", "--out", filepath.Join(t.TempDir(), "rt")}, 1, "pass --init"},
		{[]string{"runtime", "frobnicate"}, 2, `unknown command "frobnicate"`},
	}
	for _, tt := range tests {
		r := run(t, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("banger %s = %d, %q, want %d and %q", strings.Join(tt.args, " "), r.code, r.stderr, tt.code, tt.want)
		}
	}
}

func TestRuntimeHelp(t *testing.T) {
	isolateRuntime(t)
	for _, sub := range []string{"build", "install", "dist", "show"} {
		r := run(t, "runtime", sub, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "banger runtime "+sub) {
			t.Errorf("banger runtime %s --help = %d, want usage with examples", sub, r.code)
		}
	}
}
