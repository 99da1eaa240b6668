package initrd_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/image/initramfs"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

const marker = "BANGER-INIT-TEST-OK"

// bootFixture holds what every boot needs.
type bootFixture struct {
	vmlinux, initrd, rootfs string
}

func requireVMTests(t *testing.T) {
	t.Helper()
	vmtest.Require(t, "booting the initramfs under qemu", vmtest.Root(), vmtest.Tool("qemu-system-x86_64", "qemu-system-x86"),
		vmtest.Tool("mkfs.ext4", "e2fsprogs"), vmtest.Tool("debugfs", "e2fsprogs"))
}

func cacheDir(t *testing.T) string {
	t.Helper()
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "banger")
}

func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func setup(t *testing.T) bootFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := kernel.Fetch(ctx, runner.Default, cacheDir(t))
	if err != nil {
		t.Fatalf("fetching kernel: %v", err)
	}
	dir := t.TempDir()
	f := bootFixture{
		vmlinux: filepath.Join(dir, "vmlinux"),
		initrd:  filepath.Join(dir, "initrd.img"),
		rootfs:  filepath.Join(dir, "root.ext4"),
	}
	if err := kernel.ExtractVmlinuxFile(p.Vmlinuz, f.vmlinux); err != nil {
		t.Fatal(err)
	}
	initBin := filepath.Join(dir, "banger-init")
	goBuild(t, initBin, "github.com/banger/banger/cmd/banger-init")
	mods, err := kernel.LoadOrder(p.ModulesDir, initramfs.DefaultModules())
	if err != nil {
		t.Fatal(err)
	}
	if err := initramfs.Build(f.initrd, initramfs.Spec{Init: initBin, KernelVersion: p.Version, Modules: mods}); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	for _, d := range []string{"sbin", "dev", "proc", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	goBuild(t, filepath.Join(root, "sbin", "init"), "./testdata/testinit")
	if _, err := runner.Default.Run(ctx, "mkfs.ext4", "-q", "-L", "bangertest", "-d", root, f.rootfs, "64M"); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(f.initrd)
	t.Logf("kernel %s, %d modules, initrd %d bytes", p.Version, len(mods), st.Size())
	return f
}

// boot runs the VM until it exits and returns its console output and the time
// from starting qemu to the first line containing want (0 if it never came).
func boot(t *testing.T, f bootFixture, appendArgs, want string) (string, time.Duration) {
	t.Helper()
	ns := vmtest.NewNS(t)
	consoleLog := filepath.Join(t.TempDir(), "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-M", "microvm,pit=on,pic=on,rtc=on", "-m", "512", "-smp", "2",
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-serial", "file:"+consoleLog,
		"-kernel", f.vmlinux, "-initrd", f.initrd,
		"-append", "console=ttyS0 tsc_early_khz=2000000 reboot=k panic=1 pci=off "+appendArgs,
		"-drive", "id=root,file="+f.rootfs+",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var seen time.Duration
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			out, _ := os.ReadFile(consoleLog)
			if seen == 0 && strings.Contains(string(out), want) {
				seen = time.Since(start)
			}
			if err != nil {
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					t.Fatalf("qemu still running after 90s: killed\nconsole:\n%s", out)
				}
				t.Fatalf("qemu: %v: %s\nconsole:\n%s", err, stderr.String(), out)
			}
			t.Logf("qemu exited after %v", time.Since(start).Round(time.Millisecond))
			return string(out), seen
		case <-tick.C:
			if seen == 0 {
				if out, _ := os.ReadFile(consoleLog); strings.Contains(string(out), want) {
					seen = time.Since(start)
				}
			}
		}
	}
}

func bangerInitLines(console string) string {
	var b strings.Builder
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "banger-init:") || strings.Contains(l, "BANGER-INIT-TEST") {
			b.WriteString(strings.TrimRight(l, "\r") + "\n")
		}
	}
	return b.String()
}

func TestBoot(t *testing.T) {
	requireVMTests(t)
	f := setup(t)

	for _, tt := range []struct {
		name, root string
	}{
		{"dev path", "root=/dev/vda rw"},
		{"dev path reboot=t", "root=/dev/vda rw reboot=t"},
		{"label", "root=LABEL=bangertest rw rootwait=5"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			console, seen := boot(t, f, tt.root+" -- hello", marker)
			t.Logf("banger-init output:\n%s", bangerInitLines(console))
			if seen == 0 {
				t.Fatalf("console has no %s\nconsole:\n%s", marker, console)
			}
			t.Logf("qemu start to %s: %v", marker, seen.Round(time.Millisecond))
			if !strings.Contains(console, `root="ext4 rw"`) || !strings.Contains(console, `args=["hello"]`) {
				t.Errorf("guest reported %q, want root ext4 rw and args [hello]", bangerInitLines(console))
			}
			out, err := runner.Default.Run(context.Background(), "debugfs", "-R", "cat /banger-test-ok", f.rootfs)
			if err != nil || !strings.Contains(string(out), "pid=1") {
				t.Errorf("debugfs cat /banger-test-ok = %q, %v, want the guest's report", out, err)
			}
		})
	}

	t.Run("missing root reboots", func(t *testing.T) {
		start := time.Now()
		console, seen := boot(t, f, "root=/dev/vdz rw rootwait=1", "banger-init: error:")
		t.Logf("banger-init output:\n%s", bangerInitLines(console))
		if seen == 0 || !strings.Contains(console, "waiting for root device /dev/vdz") {
			t.Fatalf("console lacks the root device error\nconsole:\n%s", console)
		}
		t.Logf("error shown after %v, qemu gone after %v", seen.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	})
}
