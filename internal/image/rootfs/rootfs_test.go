package rootfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

func TestPackages(t *testing.T) {
	tests := []struct {
		kind Kind
		has  string
		not  string
	}{
		{KindDocker, "docker.io", ""},
		{KindDocker, "systemd-sysv", ""},
		{KindDocker, "rsync", ""},
		{KindMinimal, "openssh-server", "systemd-sysv"},
	}
	for _, tt := range tests {
		got := strings.Join(Packages(tt.kind), ",")
		if !strings.Contains(got, tt.has) || (tt.not != "" && strings.Contains(got, tt.not)) {
			t.Errorf("Packages(%s) = %s, want it to hold %q and not %q", tt.kind, got, tt.has, tt.not)
		}
	}
}

func TestRecipeKey(t *testing.T) {
	a := Options{Kind: KindDocker, Agent: "x"}
	if err := a.defaults(); err != nil {
		t.Fatal(err)
	}
	b := a
	b.Suite = "trixie"
	c := a
	c.Kind = KindMinimal
	if recipeKey(a) == recipeKey(b) || recipeKey(a) == recipeKey(c) {
		t.Errorf("recipeKey does not depend on suite and kind")
	}
	if recipeKey(a) != recipeKey(a) {
		t.Errorf("recipeKey is not stable")
	}
}

// TestOverlayKey checks that the image key moves with every file and link
// customize writes, so that a changed unit rebuilds the image.
func TestOverlayKey(t *testing.T) {
	if overlayKey(KindDocker) != overlayKey(KindDocker) {
		t.Fatal("overlayKey is not stable")
	}
	if overlayKey(KindDocker) == overlayKey(KindMinimal) {
		t.Error("overlayKey(docker) = overlayKey(minimal)")
	}
	files, links := imageFiles(KindDocker), imageLinks(KindDocker)
	base := keyOf(files, links, miseBashrc)
	for i, f := range files {
		changed := slices.Clone(files)
		changed[i].content += "#"
		if keyOf(changed, links, miseBashrc) == base {
			t.Errorf("keyOf ignores the content of %s", f.rel)
		}
		changed[i] = f
		changed[i].mode ^= 0o100
		if keyOf(changed, links, miseBashrc) == base {
			t.Errorf("keyOf ignores the mode of %s", f.rel)
		}
	}
	for i, l := range links {
		changed := slices.Clone(links)
		changed[i][1] += "x"
		if keyOf(files, changed, miseBashrc) == base {
			t.Errorf("keyOf ignores the target of %s", l[0])
		}
	}
	if keyOf(files[1:], links, miseBashrc) == base || keyOf(files, links[1:], miseBashrc) == base || keyOf(files, links, "") == base {
		t.Error("keyOf ignores a missing file, a missing link or the bashrc addition")
	}
}

func TestUnescapeMount(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/a/b", "/a/b"},
		{`/a\040b`, "/a b"},
	}
	for _, tt := range tests {
		if got := unescapeMount(tt.in); got != tt.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// needImageTools gates the image build tests.
func needImageTools(t *testing.T) {
	t.Helper()
	vmtest.Require(t, "building images with debootstrap from the Debian mirror", vmtest.Root(),
		vmtest.Tool("debootstrap", "debootstrap"), vmtest.Tool("mkfs.ext4", "e2fsprogs"), vmtest.Tool("debugfs", "e2fsprogs"))
}

// buildAgent compiles the static guest agent.
func buildAgent(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "banger-vsock-agent")
	vmtest.GoBuild(t, out, "github.com/banger/banger/cmd/banger-vsock-agent")
	return out
}

// debugfs runs a debugfs request against an image.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	b, err := vmtest.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v: %s", req, img, err, b)
	}
	return string(b)
}

func TestBuildImages(t *testing.T) {
	needImageTools(t)
	agent := buildAgent(t)
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, kind := range []Kind{KindMinimal, KindDocker} {
		t.Run(string(kind), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "rootfs.ext4")
			opts := Options{Kind: kind, Agent: agent, CacheDir: cache}
			start := time.Now()
			if err := Build(ctx, runner.Default, opts, out); err != nil {
				t.Fatal(err)
			}
			first := time.Since(start)
			fi, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("first build %s: %v, apparent size %d MiB, allocated %d MiB",
				kind, first.Round(time.Millisecond), fi.Size()>>20, allocated(fi)>>20)

			checks := []struct {
				req, want string
			}{
				{"stat /usr/local/bin/banger-vsock-agent", "Mode:  0755"},
				{"cat /etc/fstab", "/dev/vda / ext4 defaults 0 1"},
				{"cat /etc/ssh/sshd_config.d/banger.conf", "HostKey /etc/ssh/ssh_host_ed25519_key"},
				{"cat /etc/ssh/sshd_config.d/banger.conf", "PermitRootLogin prohibit-password"},
				{"stat /usr/sbin/sshd", "Type: regular"},
				{"stat /usr/bin/ssh-keygen", "Type: regular"},
				{"stat /usr/bin/ip", "Type: regular"},
				{"cat /etc/shadow", "root:!"},
			}
			if kind == KindDocker {
				checks = append(checks, []struct{ req, want string }{
					{"stat /etc/systemd/system/multi-user.target.wants/banger-agent.service", "Fast link dest: \"/etc/systemd/system/banger-agent.service\""},
					{"stat /etc/systemd/system/multi-user.target.wants/banger-net.service", "Fast link dest: \"/etc/systemd/system/banger-net.service\""},
					{"stat /etc/systemd/system/multi-user.target.wants/docker.service", "Type: symlink"},
					{"stat /etc/systemd/system/apt-daily.timer", "Fast link dest: \"/dev/null\""},
					{"stat /etc/systemd/system/default.target", "multi-user.target"},
					{"cat /etc/systemd/system/ssh.service.d/banger.conf", "ExecStartPre=/usr/local/bin/banger-vsock-agent ssh-host-key"},
					// /root is mounted by banger-root.service, not from fstab
					// (which would wait for udev).
					{"stat /etc/systemd/system/multi-user.target.wants/banger-root.service", "Fast link dest: \"/etc/systemd/system/banger-root.service\""},
					{"cat /etc/systemd/system/banger-root.service", "ExecStart=/bin/mount -t ext4 -o defaults /dev/vdb /root"},
					{"cat /etc/systemd/system/banger-agent.service", "After=banger-net.service banger-root.service ssh.service"},
					// /tmp is emptied before sshd starts, never after readiness.
					{"stat /etc/systemd/system/multi-user.target.wants/banger-tmp.service", "Fast link dest: \"/etc/systemd/system/banger-tmp.service\""},
					{"cat /etc/systemd/system/banger-tmp.service", "Before=ssh.service"},
					{"cat /etc/tmpfiles.d/tmp.conf", "d /tmp 1777 root root -"},
					// Early boot and every ordinary service wait for the agent.
					{"cat /etc/systemd/system/sysinit.target.d/banger.conf", "After=banger-agent.service"},
					{"cat /etc/systemd/system/systemd-udev-trigger.service.d/banger.conf", "After=banger-agent.service"},
					{"cat /etc/systemd/system/apparmor.service.d/banger.conf", "After=banger-agent.service"},
					{"stat /etc/systemd/system/modprobe@loop.service", "Fast link dest: \"/dev/null\""},
					{"stat /etc/systemd/system-generators/systemd-gpt-auto-generator", "Fast link dest: \"/dev/null\""},
					{"stat /etc/systemd/system/sockets.target.wants/docker.socket", "Type: symlink"},
					{"stat /usr/sbin/dockerd", "Type: regular"},
					{"stat /usr/lib/systemd/systemd", "Type: regular"},
					{"stat /usr/local/bin/mise", "Type: regular    Mode:  0755"},
					{"stat /usr/local/bin/opencode", "Type: regular    Mode:  0755"},
					{"stat /etc/systemd/system/multi-user.target.wants/opencode-server.service", "Fast link dest: \"/etc/systemd/system/opencode-server.service\""},
					{"cat /etc/systemd/system/opencode-server.service", "ExecStart=/usr/local/bin/opencode serve --port 4096 --hostname 0.0.0.0"},
					{"cat /etc/systemd/system/opencode-server.service", "After=banger-net.service banger-agent.service ssh.service"},
					{"cat /etc/bash.bashrc", "mise activate bash"},
					// The Debian file is kept, not replaced.
					{"cat /etc/bash.bashrc", "checkwinsize"},
				}...)
			} else {
				checks = append(checks, []struct{ req, want string }{
					{"cat /etc/fstab", "/dev/vdb /root ext4 defaults,nofail 0 2"},
					{"stat /usr/sbin/init", "Fast link dest: \"/usr/local/bin/banger-vsock-agent\""},
					{"stat /usr/local/bin/mise", "not found"},
					{"stat /usr/local/bin/opencode", "not found"},
				}...)
			}
			for _, c := range checks {
				if got := debugfs(t, out, c.req); !strings.Contains(got, c.want) {
					t.Errorf("debugfs %q = %q, want it to contain %q", c.req, got, c.want)
				}
			}
			if got := debugfs(t, out, "ls /etc/ssh"); strings.Contains(got, "ssh_host_") {
				t.Errorf("debugfs ls /etc/ssh = %q, want no baked host keys", got)
			}
			if got := debugfs(t, out, "stat /etc/machine-id"); !strings.Contains(got, "Size: 0") {
				t.Errorf("debugfs stat /etc/machine-id = %q, want an empty file", got)
			}
			if got := debugfs(t, out, "cat /etc/hostname"); strings.TrimSpace(got) != "" && !strings.HasPrefix(got, "debugfs") {
				t.Errorf("debugfs cat /etc/hostname = %q, want empty", got)
			}

			out2 := filepath.Join(t.TempDir(), "rootfs.ext4")
			start = time.Now()
			if err := Build(ctx, runner.Default, opts, out2); err != nil {
				t.Fatal(err)
			}
			second := time.Since(start)
			t.Logf("cached rebuild %s: %v", kind, second.Round(time.Millisecond))
			if second > 30*time.Second {
				t.Errorf("cached rebuild of %s took %v, want a few seconds", kind, second)
			}
		})
	}
}

func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
