package firecracker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/netns"
	"github.com/banger/banger/internal/runner"
)

// bundleForTest is the part of bundle.json (docs/architecture.md) this test reads.
type bundleForTest struct {
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
	BootArgs string `json:"boot_args"`
	Images   []struct {
		Name     string `json:"name"`
		RootFS   string `json:"rootfs"`
		WorkSeed string `json:"work_seed"`
	} `json:"images"`
}

// TestRealBoot boots the bundle's minimal image under the real firecracker
// and waits for the agent's health over vsock. It runs only where
// firecracker is in PATH and hardware KVM works; with BANGER_VM_TESTS=1 a
// missing bundle or root then fails the test instead of skipping it.
func TestRealBoot(t *testing.T) {
	var missing []string
	if _, err := exec.LookPath("firecracker"); err != nil {
		missing = append(missing, "firecracker not in PATH")
	}
	if err := hypervisor.KVMUsable(); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		t.Skip("skipping the real Firecracker boot: " + strings.Join(missing, "; "))
	}
	require := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("BANGER_VM_TESTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg + " (set BANGER_VM_TESTS=1, as make test does, to make this an error)")
	}
	if os.Geteuid() != 0 {
		require("booting VMs needs root (a network namespace and a TAP)")
	}
	dir := os.Getenv("BANGER_RUNTIME")
	if dir == "" {
		require("BANGER_RUNTIME is not set; point it at a built runtime bundle")
	}
	data, err := os.ReadFile(filepath.Join(dir, "bundle.json"))
	if err != nil {
		require("reading the runtime bundle: %v", err)
	}
	var bundle bundleForTest
	if err := json.Unmarshal(data, &bundle); err != nil {
		t.Fatalf("decoding %s/bundle.json: %v", dir, err)
	}
	var rootfs, seed string
	for _, img := range bundle.Images {
		if img.Name == "minimal" {
			rootfs, seed = filepath.Join(dir, img.RootFS), filepath.Join(dir, img.WorkSeed)
		}
	}
	if rootfs == "" {
		t.Fatalf("bundle %s has no minimal image", dir)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vmDir := t.TempDir()
	// The guest writes to its disks: boot copies, never the bundle's files.
	for _, c := range [][2]string{{rootfs, "root.ext4"}, {seed, "work.ext4"}} {
		if _, err := runner.Default.Run(ctx, "cp", "--reflink=auto", "--sparse=always", c[0], filepath.Join(vmDir, c[1])); err != nil {
			t.Fatalf("copying %s: %v", c[0], err)
		}
	}

	ns := netns.New(t)
	for _, args := range [][]string{
		{"-n", ns.Name, "tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"-n", ns.Name, "addr", "add", "10.200.0.1/24", "dev", "tap0"},
		{"-n", ns.Name, "link", "set", "tap0", "up"},
	} {
		if _, err := runner.Default.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}

	id := "realboot-" + filepath.Base(vmDir)
	id = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, id)
	if len(id) > 64 {
		id = id[:64]
	}
	spec := hypervisor.Spec{
		ID:        id,
		Dir:       vmDir,
		Kernel:    filepath.Join(dir, bundle.Kernel),
		Initrd:    filepath.Join(dir, bundle.Initrd),
		Cmdline:   bundle.BootArgs + " root=/dev/vda rw ip=10.200.0.2::10.200.0.1:255.255.255.0:fcboot:eth0:off:10.200.0.1",
		VCPUs:     2,
		MemoryMiB: 512,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: filepath.Join(vmDir, "root.ext4"), Root: true},
			{ID: "work", Path: filepath.Join(vmDir, "work.ext4")},
		},
		NICs:       []hypervisor.NIC{{ID: "eth0", TAP: "tap0", MAC: "06:00:0a:c8:00:02"}},
		ConsoleLog: filepath.Join(vmDir, "console.log"),
		AgentCID:   3,
	}
	b := Backend{}
	var inst hypervisor.Instance
	// Firecracker opens the TAP in its own network namespace, so spawn it
	// from a thread inside ns.
	t0 := time.Now()
	if err := ns.Do(func() error {
		var err error
		inst, err = b.Start(ctx, spec)
		return err
	}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Kill()

	var last error
	for ctx.Err() == nil {
		var h map[string]any
		if h, last = agentHealth(ctx, inst); last == nil {
			t.Logf("agent healthy after %v: %v", time.Since(t0), h)
			break
		}
		if inst.Exited() {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last != nil {
		console, _ := os.ReadFile(spec.ConsoleLog)
		t.Fatalf("agent never answered: %v\nconsole:\n%s", last, console)
	}
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	if err := inst.Shutdown(sctx); err != nil {
		t.Logf("Shutdown: %v; killing", err)
		if err := inst.Kill(); err != nil {
			t.Fatal(err)
		}
	}
}

// agentHealth asks the guest agent for its health once.
func agentHealth(ctx context.Context, inst hypervisor.Instance) (map[string]any, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := inst.DialAgent(dctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, `{"op":"health"}`); err != nil {
		return nil, err
	}
	var resp map[string]any
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("reading health: %w", err)
	}
	if resp["ok"] != true {
		return nil, fmt.Errorf("health answer %v", resp)
	}
	return resp, nil
}
