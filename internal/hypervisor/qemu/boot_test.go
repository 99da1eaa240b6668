package qemu

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// requireVM gates the tests that boot a VM.
func requireVM(t *testing.T) {
	t.Helper()
	vmtest.Require(t, "booting a VM under qemu", vmtest.Root(), vmtest.Tool(DefaultBinary, "qemu-system-x86"))
}

// testKernel returns a kernel image: $BANGER_RUNTIME/vmlinux, else the
// Debian cloud kernel fetched into the user's cache.
func testKernel(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("BANGER_RUNTIME"); dir != "" {
		p := filepath.Join(dir, "vmlinux")
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("BANGER_RUNTIME=%s: %v", dir, err)
		}
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := kernel.Fetch(ctx, runner.Default, filepath.Join(cache, "banger"))
	if err != nil {
		t.Fatalf("fetching kernel: %v", err)
	}
	return p.Vmlinuz
}

// shortDir is a runtime dir whose socket paths stay under the unix limit.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitConsole waits until the console log contains s and returns when it
// was first seen.
func waitConsole(t *testing.T, path, s string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		data, _ := os.ReadFile(path)
		if bytes.Contains(data, []byte(s)) {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	data, _ := os.ReadFile(path)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	t.Fatalf("console %s: no %q after %v; it ends with:\n%s", path, s, timeout, data)
	return time.Time{}
}

func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// checkGone asserts that pid no longer runs and nothing is left in ns.
func checkGone(t *testing.T, pid int, ns *vmtest.NS) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "cmdline")); err == nil {
		if args, err := proc.Cmdline(pid); err == nil && len(args) > 0 && strings.Contains(args[0], "qemu") {
			t.Errorf("qemu pid %d still runs", pid)
		}
	}
	if pids := ns.PIDs(); len(pids) != 0 {
		t.Errorf("processes left in namespace %s: %v", ns.Name, pids)
	}
}

// TestBootPanics boots the bare kernel with a NIC whose TAP lives in a test
// namespace. Without a root file system the kernel panics; panic=1 reboots
// and -no-reboot makes QEMU exit.
func TestBootPanics(t *testing.T) {
	requireVM(t)
	vmlinux := testKernel(t)
	ns := vmtest.NewNS(t)
	if out, err := vmtest.Command("ip", "-n", ns.Name, "tuntap", "add", "dev", "tap0", "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("creating tap0 in %s: %v: %s", ns.Name, err, out)
	}
	// Under TCG a guest kernel very rarely stops early in boot (seen once:
	// no console output for 2 minutes after "sched_clock: Marking stable").
	// That is the emulator, not the backend under test: such a boot is
	// killed and the test boots once more; a second stall fails.
	for attempt := 1; ; attempt++ {
		r := bootToPanic(t, ns, vmlinux)
		if !r.stalled {
			r.check(t, ns)
			return
		}
		if attempt == 2 {
			t.Fatalf("the guest kernel stalled before its panic in two boots; console ends with:\n%s", r.tail)
		}
		t.Logf("the guest kernel stalled before its panic (console unchanged for %v); booting again. Console ends with:\n%s", stallAfter, r.tail)
	}
}

// stallAfter is how long a console may stay unchanged before the panic
// before the boot counts as stalled (a normal one panics within seconds).
const stallAfter = 45 * time.Second

// panicBoot is one boot of TestBootPanics.
type panicBoot struct {
	b       *Backend
	spec    hypervisor.Spec
	inst    hypervisor.Instance
	ctx     context.Context
	t0      time.Time
	started time.Duration
	version time.Duration
	// panicked is when the console showed the panic, from t0.
	panicked time.Duration
	stalled  bool
	tail     string
}

func bootToPanic(t *testing.T, ns *vmtest.NS, vmlinux string) *panicBoot {
	dir := shortDir(t)
	sparseFile(t, filepath.Join(dir, "scratch.img"), 64<<20)
	sparseFile(t, filepath.Join(dir, "seed.img"), 16<<20)
	spec := hypervisor.Spec{
		ID:        "panic1",
		Dir:       dir,
		Kernel:    vmlinux,
		Cmdline:   "console=ttyS0 reboot=k panic=1",
		VCPUs:     2,
		MemoryMiB: 512,
		Disks: []hypervisor.Disk{
			{ID: "scratch", Path: filepath.Join(dir, "scratch.img")},
			{ID: "seed", Path: filepath.Join(dir, "seed.img"), ReadOnly: true},
		},
		NICs:       []hypervisor.NIC{{ID: "net0", TAP: "tap0", MAC: "02:fc:00:00:00:01"}},
		ConsoleLog: filepath.Join(dir, "console.log"),
		AgentCID:   3,
	}
	// The console of an earlier boot is kept.
	if err := os.WriteFile(spec.ConsoleLog, []byte("earlier boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Backend{Wrap: []string{"ip", "netns", "exec", ns.Name}, Log: testLogger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)

	t0 := time.Now()
	inst, err := b.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	started := time.Since(t0)
	t.Cleanup(func() { inst.Kill() })
	pid := inst.PID()

	// QEMU runs inside the namespace and holds its TAP there.
	if got, want := readlink(t, "/proc/"+strconv.Itoa(pid)+"/ns/net"), nsInode(t, ns); got != want {
		t.Errorf("qemu's network namespace = %s, want %s", got, want)
	}
	st, err := inst.(*instance).status(ctx)
	if err != nil || st.Status != "running" {
		t.Errorf("query-status = %+v, %v, want running", st, err)
	}
	conn, err := inst.DialAgent(ctx)
	if err != nil {
		t.Errorf("DialAgent() = %v, want a connection to the serial agent socket", err)
	} else {
		conn.Close()
	}

	version := waitConsole(t, spec.ConsoleLog, "Linux version", time.Minute).Sub(t0)
	r := &panicBoot{b: b, spec: spec, inst: inst, ctx: ctx, t0: t0, started: started, version: version}
	var last []byte
	changed := time.Now()
	for {
		data, _ := os.ReadFile(spec.ConsoleLog)
		if bytes.Contains(data, []byte("Kernel panic")) {
			r.panicked = time.Since(t0)
			return r
		}
		if !bytes.Equal(data, last) {
			last, changed = data, time.Now()
		}
		if time.Since(changed) > stallAfter {
			inst.Kill()
			if len(data) > 3000 {
				data = data[len(data)-3000:]
			}
			r.stalled, r.tail = true, string(data)
			return r
		}
		if time.Since(t0) > 2*time.Minute {
			t.Fatalf("console %s: no \"Kernel panic\" after 2m0s; it ends with:\n%s", spec.ConsoleLog, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check is the rest of TestBootPanics, once the guest panicked.
func (r *panicBoot) check(t *testing.T, ns *vmtest.NS) {
	b, spec, inst, ctx, t0, started, version, panicked := r.b, r.spec, r.inst, r.ctx, r.t0, r.started, r.version, r.panicked
	pid := inst.PID()
	if err := inst.Wait(ctx); err != nil {
		t.Fatalf("Wait() after the panic = %v, want nil", err)
	}
	exited := time.Since(t0)
	if !inst.Exited() {
		t.Error("Exited() after Wait = false, want true")
	}
	t.Logf("Start returned after %v; Linux version at %v; kernel panic at %v; qemu exited at %v",
		started.Round(time.Millisecond), version.Round(time.Millisecond), panicked.Round(time.Millisecond), exited.Round(time.Millisecond))

	data, _ := os.ReadFile(spec.ConsoleLog)
	if !bytes.HasPrefix(data, []byte("earlier boot\n")) {
		t.Errorf("console log lost what was written before Start")
	}
	if n := bytes.Count(data, []byte("Linux version")); n != 1 {
		t.Errorf("console shows %d boots, want 1 (a panic must end the VM, not reboot it)", n)
	}
	if _, err := b.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach() after exit = %v, want ErrNotRunning", err)
	}
	checkGone(t, pid, ns)
}

// TestAttachAfterRestart starts a VM, forgets it as a restarted daemon
// would, attaches with a fresh Backend, then stops it.
func TestAttachAfterRestart(t *testing.T) {
	requireVM(t)
	vmlinux := testKernel(t)
	ns := vmtest.NewNS(t)
	dir := shortDir(t)
	spec := hypervisor.Spec{
		ID:  "hang1",
		Dir: dir,
		// No panic=: the kernel stays at its panic until killed.
		Kernel:     vmlinux,
		Cmdline:    "console=ttyS0",
		VCPUs:      1,
		MemoryMiB:  256,
		ConsoleLog: filepath.Join(dir, "console.log"),
		AgentCID:   3,
	}
	wrap := []string{"ip", "netns", "exec", ns.Name}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first, err := (&Backend{Wrap: wrap, Log: testLogger(t)}).Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	t.Cleanup(func() { first.Kill() })
	pid := first.PID()

	// A new daemon: a fresh Backend value, nothing but spec.
	b := &Backend{Wrap: wrap, Log: testLogger(t)}
	inst, err := b.Attach(ctx, spec)
	if err != nil {
		t.Fatalf("Attach() = %v, want the running instance", err)
	}
	if inst.PID() != pid {
		t.Errorf("Attach().PID() = %d, want %d", inst.PID(), pid)
	}
	if inst.Exited() {
		t.Error("Exited() of the attached instance = true, want false")
	}
	if _, err := b.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Errorf("Start() of a running vm = %v, want an already-running error", err)
	}

	// A kernel without userspace ignores the power button.
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	err = inst.Shutdown(short)
	cancel2()
	if err == nil {
		t.Errorf("Shutdown() of a guest without userspace = nil, want a timeout")
	}

	// A qemu whose monitor does not answer (stopped here) is SIGKILLed.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := inst.Kill(); err != nil {
		t.Fatalf("Kill() = %v", err)
	}
	t.Logf("Kill of a stopped qemu took %v", time.Since(t0).Round(time.Millisecond))
	if !inst.Exited() {
		t.Error("Exited() after Kill = false, want true")
	}
	// The first handle sees the exit too.
	wctx, cancel3 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel3()
	if err := first.Wait(wctx); err != nil {
		t.Errorf("Wait() on the first handle after Kill = %v, want nil", err)
	}
	if _, err := b.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach() after Kill = %v, want ErrNotRunning", err)
	}
	checkGone(t, pid, ns)
}

// TestStartError checks that a configuration QEMU rejects fails Start with
// QEMU's own message and leaves nothing running. Nothing boots.
func TestStartError(t *testing.T) {
	vmtest.RequireHost(t, "a qemu start error", vmtest.Tool(DefaultBinary, "qemu-system-x86"))
	dir := shortDir(t)
	spec := hypervisor.Spec{
		ID: "bad1", Dir: dir, Kernel: filepath.Join(dir, "no-such-kernel"),
		Cmdline: "console=ttyS0", VCPUs: 1, MemoryMiB: 128, AgentCID: 3,
	}
	_, err := (&Backend{Accel: "tcg"}).Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "could not open kernel file") {
		t.Fatalf("Start(missing kernel) = %v, want qemu's could-not-open-kernel message", err)
	}
	t.Logf("Start(missing kernel) = %v", err)
	if _, err := os.Stat(filepath.Join(dir, PIDFile)); err == nil {
		t.Errorf("a pid file is left behind")
	}
}

func readlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// nsInode returns the namespace's identity as /proc/<pid>/ns/net shows it.
func nsInode(t *testing.T, ns *vmtest.NS) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatal(err)
	}
	return "net:[" + strconv.FormatUint(st.Ino, 10) + "]"
}
