package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
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

// realHost is what a test needs to boot the bundle's minimal image under
// the real firecracker: the bundle and a network namespace with TAPs.
type realHost struct {
	ctx          context.Context
	dir          string
	bundle       bundleForTest
	rootfs, seed string
	ns           *vmtest.NS
}

// newRealHost skips unless firecracker and hardware KVM are here; with
// BANGER_VM_TESTS=1 a missing bundle or root then fails the test instead
// of skipping it. It makes a namespace holding one TAP per name in taps.
func newRealHost(t *testing.T, taps ...string) *realHost {
	t.Helper()
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
		vmtest.RequireHost(t, "a real Firecracker boot", func() error { return errors.New(msg) })
	}
	vmtest.RequireHost(t, "a real Firecracker boot", vmtest.Root())
	h := &realHost{dir: os.Getenv("BANGER_RUNTIME")}
	if h.dir == "" {
		require("BANGER_RUNTIME is not set; point it at a built runtime bundle")
	}
	data, err := os.ReadFile(filepath.Join(h.dir, "bundle.json"))
	if err != nil {
		require("reading the runtime bundle: %v", err)
	}
	if err := json.Unmarshal(data, &h.bundle); err != nil {
		t.Fatalf("decoding %s/bundle.json: %v", h.dir, err)
	}
	for _, img := range h.bundle.Images {
		if img.Name == "minimal" {
			h.rootfs, h.seed = filepath.Join(h.dir, img.RootFS), filepath.Join(h.dir, img.WorkSeed)
		}
	}
	if h.rootfs == "" {
		t.Fatalf("bundle %s has no minimal image", h.dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	h.ctx = ctx
	h.ns = vmtest.NewNS(t)
	for _, tap := range taps {
		for _, args := range [][]string{
			{"-n", h.ns.Name, "tuntap", "add", "dev", tap, "mode", "tap"},
			{"-n", h.ns.Name, "link", "set", tap, "up"},
		} {
			if _, err := runner.Default.Run(ctx, "ip", args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(taps) > 0 {
		if _, err := runner.Default.Run(ctx, "ip", "-n", h.ns.Name, "addr", "add", "10.200.0.1/24", "dev", taps[0]); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// spec returns a spec for a VM in a new directory on tap, with copies of
// the files in disks (the bundle's image and seed when nil): the guest
// writes to its disks, never to the bundle's files.
func (h *realHost) spec(t *testing.T, tap string, disks []string) hypervisor.Spec {
	t.Helper()
	vmDir := t.TempDir()
	if disks == nil {
		disks = []string{h.rootfs, h.seed}
	}
	for i, name := range []string{"root.ext4", "work.ext4"} {
		if _, err := runner.Default.Run(h.ctx, "cp", "--reflink=auto", "--sparse=always", disks[i], filepath.Join(vmDir, name)); err != nil {
			t.Fatalf("copying %s: %v", disks[i], err)
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
	return hypervisor.Spec{
		ID:        id,
		Dir:       vmDir,
		Kernel:    filepath.Join(h.dir, h.bundle.Kernel),
		Initrd:    filepath.Join(h.dir, h.bundle.Initrd),
		Cmdline:   h.bundle.BootArgs + " root=/dev/vda rw ip=10.200.0.2::10.200.0.1:255.255.255.0:fcboot:eth0:off:10.200.0.1",
		VCPUs:     2,
		MemoryMiB: 512,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: filepath.Join(vmDir, "root.ext4"), Root: true},
			{ID: "work", Path: filepath.Join(vmDir, "work.ext4")},
		},
		NICs:       []hypervisor.NIC{{ID: "eth0", TAP: tap, MAC: "06:00:0a:c8:00:02"}},
		ConsoleLog: filepath.Join(vmDir, "console.log"),
		AgentCID:   3,
	}
}

// inNS runs fn from a thread inside the namespace: Firecracker opens its
// TAP in its own network namespace.
func (h *realHost) inNS(t *testing.T, what string, fn func() (hypervisor.Instance, error)) hypervisor.Instance {
	t.Helper()
	var inst hypervisor.Instance
	if err := h.ns.Do(func() error {
		var err error
		inst, err = fn()
		return err
	}); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Cleanup(func() { inst.Kill() })
	return inst
}

// waitHealthy polls the guest agent until it answers.
func (h *realHost) waitHealthy(t *testing.T, inst hypervisor.Instance, spec hypervisor.Spec, since time.Time) map[string]any {
	t.Helper()
	var last error
	for h.ctx.Err() == nil {
		var resp map[string]any
		if resp, last = agentHealth(h.ctx, inst); last == nil {
			t.Logf("agent of %s healthy after %v: %v", spec.ID, time.Since(since), resp)
			return resp
		}
		if inst.Exited() {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	console, _ := os.ReadFile(spec.ConsoleLog)
	t.Fatalf("agent of %s never answered: %v\nconsole:\n%s", spec.ID, last, console)
	return nil
}

// TestRealBoot boots the bundle's minimal image under the real firecracker
// and waits for the agent's health over vsock. It runs only where
// firecracker is in PATH and hardware KVM works.
func TestRealBoot(t *testing.T) {
	h := newRealHost(t, "tap0")
	spec := h.spec(t, "tap0", nil)
	b := Backend{}
	t0 := time.Now()
	inst := h.inNS(t, "Start", func() (hypervisor.Instance, error) { return b.Start(h.ctx, spec) })
	h.waitHealthy(t, inst, spec, t0)
	sctx, scancel := context.WithTimeout(h.ctx, 20*time.Second)
	defer scancel()
	if err := inst.Shutdown(sctx); err != nil {
		t.Logf("Shutdown: %v; killing", err)
		if err := inst.Kill(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRealSnapshotRestore boots the minimal image, snapshots it, ends it
// and restores the snapshot into a new VM with copies of its disks, another
// TAP and another vsock socket; then snapshots and restores that one too.
// Each restored guest must answer with an uptime that went on from the
// snapshot's (restored, not booted), and be adoptable by Attach.
func TestRealSnapshotRestore(t *testing.T) {
	h := newRealHost(t, "tap0", "tap1", "tap2")
	b := Backend{}
	src := h.spec(t, "tap0", nil)
	t0 := time.Now()
	inst := h.inNS(t, "Start", func() (hypervisor.Instance, error) { return b.Start(h.ctx, src) })
	h.waitHealthy(t, inst, src, t0)

	version, err := b.Version(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	prev, prevSpec := inst, src
	for i, tap := range []string{"tap1", "tap2"} {
		before, err := agentHealth(h.ctx, prev)
		if err != nil {
			t.Fatal(err)
		}
		if err := prev.(hypervisor.Pauser).Pause(h.ctx); err != nil {
			t.Fatal(err)
		}
		snapDir := t.TempDir()
		t1 := time.Now()
		if err := prev.(hypervisor.Snapshotter).Snapshot(h.ctx, snapDir); err != nil {
			t.Fatal(err)
		}
		t.Logf("snapshot %d of %s written in %v", i+1, prevSpec.ID, time.Since(t1))
		if m := readMeta(t, snapDir); m.FirecrackerVersion != version {
			t.Errorf("snapshot records firecracker %s, Version() = %s", m.FirecrackerVersion, version)
		}
		// The disks are copied while the guest is paused, so that they
		// match its memory; the snapshotted VM's own disks stay in place.
		next := h.spec(t, tap, []string{prevSpec.Disks[0].Path, prevSpec.Disks[1].Path})
		if err := prev.Kill(); err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		restored := h.inNS(t, "Restore", func() (hypervisor.Instance, error) { return b.Restore(h.ctx, next, snapDir) })
		after := h.waitHealthy(t, restored, next, t2)
		t.Logf("restore %d answered after %v", i+1, time.Since(t2))
		if up, was := after["uptime_ms"].(float64), before["uptime_ms"].(float64); up < was {
			t.Errorf("restored uptime %vms < %vms before the snapshot: the guest booted", up, was)
		}
		adopted, err := Backend{}.Attach(h.ctx, next)
		if err != nil {
			t.Fatalf("Attach to the restored VM: %v", err)
		}
		if adopted.PID() != restored.PID() {
			t.Errorf("adopted PID() = %d, want %d", adopted.PID(), restored.PID())
		}
		prev, prevSpec = restored, next
	}
	if err := prev.Kill(); err != nil {
		t.Fatal(err)
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
