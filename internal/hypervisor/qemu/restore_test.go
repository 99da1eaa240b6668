package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// runtimeFiles are the bundle files the restore tests boot.
type runtimeFiles struct {
	kernel, initrd, minimal, docker, seed, key string
}

// testRuntime returns $BANGER_RUNTIME's files; a missing one skips the
// test, or fails it under BANGER_VM_TESTS=1.
func testRuntime(t testing.TB) runtimeFiles {
	t.Helper()
	hint := "set BANGER_RUNTIME to a built runtime bundle (make runtime-bundle)"
	vmtest.Require(t, "restoring the bundle's images under qemu", vmtest.Var("BANGER_RUNTIME", hint))
	dir := os.Getenv("BANGER_RUNTIME")
	f := runtimeFiles{
		kernel:  filepath.Join(dir, "vmlinux"),
		initrd:  filepath.Join(dir, "initrd.img"),
		minimal: filepath.Join(dir, "rootfs-minimal.ext4"),
		docker:  filepath.Join(dir, "rootfs-docker.ext4"),
		seed:    filepath.Join(dir, "work-seed.ext4"),
		key:     filepath.Join(dir, "id_ed25519"),
	}
	var needs []vmtest.Need
	for _, p := range []string{f.kernel, f.initrd, f.minimal, f.docker, f.seed, f.key} {
		needs = append(needs, vmtest.File(p, hint))
	}
	vmtest.Require(t, "restoring the bundle's images under qemu", needs...)
	return f
}

// guestIP is every test guest's address; its TAP's host side is .1.
const guestIP = "172.30.0.2"

func addTap(t testing.TB, ns *vmtest.NS, name string) {
	t.Helper()
	for _, args := range [][]string{
		{"tuntap", "add", name, "mode", "tap"},
		{"addr", "add", "172.30.0.1/24", "dev", name},
		{"link", "set", name, "up"},
	} {
		if out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in %s: %v: %s", args, ns.Name, err, out)
		}
	}
}

func delTap(t testing.TB, ns *vmtest.NS, name string) {
	t.Helper()
	if out, err := vmtest.Command("ip", "-n", ns.Name, "link", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip link del %s in %s: %v: %s", name, ns.Name, err, out)
	}
}

// guestSpec is a VM of the minimal or docker image with a root and a work
// disk and one NIC on tap.
func guestSpec(rt runtimeFiles, id, dir, tap, mac string, disks []hypervisor.Disk) hypervisor.Spec {
	return hypervisor.Spec{
		ID:         id,
		Dir:        dir,
		Kernel:     rt.kernel,
		Initrd:     rt.initrd,
		Cmdline:    "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=" + guestIP + "::172.30.0.1:255.255.255.0:" + id + ":eth0:off:172.30.0.1",
		VCPUs:      2,
		MemoryMiB:  1024,
		Disks:      disks,
		NICs:       []hypervisor.NIC{{ID: "eth0", TAP: tap, MAC: mac}},
		ConsoleLog: filepath.Join(dir, "console.log"),
		AgentCID:   3,
	}
}

// rawDisks clones the image and the work seed into dir.
func rawDisks(t testing.TB, rt runtimeFiles, image, dir string) []hypervisor.Disk {
	t.Helper()
	root, work := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "work.ext4")
	for src, dst := range map[string]string{image: root, rt.seed: work} {
		if _, err := disk.Clone(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	return []hypervisor.Disk{{ID: "root", Path: root, Root: true}, {ID: "work", Path: work}}
}

// overlayDisks makes qcow2 overlays in dir over bases (root, work) of format.
func overlayDisks(t testing.TB, bases []string, format, dir string) []hypervisor.Disk {
	t.Helper()
	var disks []hypervisor.Disk
	for k, id := range []string{"root", "work"} {
		p := filepath.Join(dir, id+".qcow2")
		if err := disk.Overlay(context.Background(), runner.Default, bases[k], format, p, 0); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, hypervisor.Disk{ID: id, Path: p, Root: k == 0, Format: hypervisor.DiskQcow2})
	}
	return disks
}

func agentOf(inst hypervisor.Instance) *agent.Client {
	return &agent.Client{Dial: inst.DialAgent}
}

// waitHealth asks the agent until it answers with host keys.
func waitHealth(t testing.TB, inst hypervisor.Instance, console string, timeout time.Duration) *agent.Health {
	t.Helper()
	c := agentOf(inst)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		h, err := c.Health(ctx)
		cancel()
		if err == nil && h.OK && len(h.SSHHostKeys) > 0 {
			return h
		}
		last = err
		if inst.Exited() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	data, _ := os.ReadFile(console)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	t.Fatalf("the agent did not answer within %v (last error %v, exited %v); console:\n%s", timeout, last, inst.Exited(), data)
	return nil
}

// sshRun runs script in the guest as root with the bundle key, trusting
// only hostKey (an authorized_keys line from the agent).
func sshRun(t testing.TB, ns *vmtest.NS, keyPath, hostKey, script string) string {
	t.Helper()
	priv, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		t.Fatalf("parsing host key %q: %v", hostKey, err)
	}
	var lastErr error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, err := ns.SSH(context.Background(), guestIP+":22", signer, pinned, script)
		if err == nil {
			return out
		}
		lastErr = err
		var exitErr *ssh.ExitError
		if errors.As(err, &exitErr) {
			break
		}
	}
	t.Fatalf("ssh %s: %v", guestIP, lastErr)
	return ""
}

func sha(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// assertClean checks that nothing of a VM runs or is left in dir: no
// qemu, pid file, sockets or restore marker, nothing in the namespace.
func assertClean(t testing.TB, dir string, ns *vmtest.NS) {
	t.Helper()
	for _, name := range []string{PIDFile, QMPSocket, AgentSocket, RestoringFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s is left in %s", name, dir)
		}
	}
	if pids := ns.PIDs(); len(pids) != 0 {
		t.Errorf("processes left in namespace %s: %v", ns.Name, pids)
	}
}

// marker is what the source guest leaves for its restores to find: a file
// on the work disk and a process.
const markerScript = `echo from-the-source > /root/restored-marker && sync && (setsid sleep 86400 >/dev/null 2>&1 < /dev/null &) && echo started`

// TestSnapshotRestore boots the minimal image, leaves a file and a process
// in it, pauses and snapshots it, kills it, and restores it under another
// name onto another TAP and other copies of its disks: the guest continues
// (the process and its uptime go on, the new console shows no boot), its
// agent answers on the new serial socket, SSH works with the pinned host
// key, and a fresh backend adopts the restored QEMU. Bad snapshots are
// refused before anything starts, and a failed load leaves nothing.
//
// stream: the source boots from qcow2 overlays over the bundle's images
// (which stay unchanged), RAM goes into the migration stream, and the
// restore runs on copies of the overlays. shared: the source's RAM is a
// shared file, the snapshot copies no RAM (x-ignore-shared), and the
// restore maps it privately, on qcow2 overlays over the raw source disks.
func TestSnapshotRestore(t *testing.T) {
	requireVM(t)
	vmtest.Require(t, "restoring onto qcow2 overlays", vmtest.Tool("qemu-img", "qemu-utils"))
	rt := testRuntime(t)
	for _, mode := range []string{MemoryStream, MemoryShared} {
		t.Run(mode, func(t *testing.T) { snapshotRestore(t, rt, mode) })
	}
}

func snapshotRestore(t *testing.T, rt runtimeFiles, mode string) {
	ns := vmtest.NewNS(t)
	addTap(t, ns, "tap0")
	srcDir, dstDir, snap := shortDir(t), shortDir(t), shortDir(t)
	wrap := []string{"ip", "netns", "exec", ns.Name}
	b := &Backend{Wrap: wrap, Log: testLogger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var srcDisks []hypervisor.Disk
	var baseSums map[string]string
	if mode == MemoryStream {
		baseSums = map[string]string{rt.minimal: sha(t, rt.minimal), rt.seed: sha(t, rt.seed)}
		srcDisks = overlayDisks(t, []string{rt.minimal, rt.seed}, disk.FormatRaw, srcDir)
	} else {
		srcDisks = rawDisks(t, rt, rt.minimal, srcDir)
	}
	src := guestSpec(rt, "src1", srcDir, "tap0", "02:fc:00:00:00:01", srcDisks)
	if mode == MemoryShared {
		src.MemoryFile = filepath.Join(srcDir, "ram")
	}
	t0 := time.Now()
	inst, err := b.Start(ctx, src)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	t.Cleanup(func() { inst.Kill() })
	h1 := waitHealth(t, inst, src.ConsoleLog, 3*time.Minute)
	t.Logf("source: agent answered %v after Start, uptime %d ms", time.Since(t0).Round(time.Millisecond), h1.UptimeMS)
	out := sshRun(t, ns, rt.key, h1.SSHHostKeys[0], markerScript+`; cat /sys/class/net/eth0/address`)
	if !strings.Contains(out, "started") || !strings.Contains(out, "02:fc:00:00:00:01") {
		t.Fatalf("source guest: %q, want the marker written and mac 02:fc:00:00:00:01", out)
	}

	pauser := inst.(hypervisor.Pauser)
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctx, snap); err == nil || !strings.Contains(err.Error(), "not paused: pause it first") {
		t.Errorf("Snapshot(running VM) = %v, want a not-paused refusal", err)
	}
	if err := pauser.Pause(ctx); err != nil {
		t.Fatalf("Pause() = %v", err)
	}
	h, err := agentOf(inst).Health(ctxFor(ctx, time.Second))
	if err == nil {
		t.Errorf("agent of a paused VM answered %+v, want no answer", h)
	}
	atSnapshot := waitHealthUptime(t, inst, pauser)
	if err := pauser.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if mode == MemoryStream {
		// A snapshot that fails midway (the disk fills up) leaves the
		// directory empty and the VM paused, ready for another try.
		full := t.TempDir()
		if out, err := vmtest.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", full).CombinedOutput(); err != nil {
			t.Fatalf("mounting a small tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() { vmtest.Command("umount", full).Run() })
		err := inst.(hypervisor.Snapshotter).Snapshot(ctx, full)
		if err == nil || !strings.Contains(err.Error(), "migrating to "+SnapshotStateName) {
			t.Errorf("Snapshot(onto a full disk) = %v, want a migration error", err)
		} else {
			t.Logf("Snapshot(onto a full disk) = %v", err)
		}
		if left := dirSizes(t, full); len(left) != 0 {
			t.Errorf("a failed snapshot left %v", left)
		}
		if st, err := inst.(*instance).status(ctx); err != nil || st.Running {
			t.Errorf("after a failed snapshot the VM is %+v, %v, want paused", st, err)
		}
	}
	t1 := time.Now()
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctx, snap); err != nil {
		t.Fatalf("Snapshot() = %v", err)
	}
	snapTook := time.Since(t1)
	sizes := dirSizes(t, snap)
	t.Logf("%s snapshot took %v: %v", mode, snapTook.Round(time.Millisecond), sizes)
	wantFiles := []string{SnapshotMetaName, SnapshotStateName}
	if mode == MemoryShared {
		wantFiles = append(wantFiles, SnapshotMemoryName)
		if _, err := os.Stat(src.MemoryFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the source's memory file is still at %s after the snapshot (err %v), want it moved", src.MemoryFile, err)
		}
		if sizes[SnapshotStateName] > 16<<20 {
			t.Errorf("shared-memory state stream is %d bytes, want no RAM in it (under 16 MiB)", sizes[SnapshotStateName])
		}
		if err := pauser.Resume(ctx); err == nil || !strings.Contains(err.Error(), "moved into a snapshot") {
			t.Errorf("Resume() after a shared-memory snapshot = %v, want a refusal", err)
		}
	}
	if len(sizes) != len(wantFiles) {
		t.Errorf("snapshot files = %v, want %q", sizes, wantFiles)
	}
	meta := readMeta(t, snap)
	if meta["memory"] != mode || meta["memory_mib"] != float64(1024) || meta["agent"] != agentSerial || meta["accel"] != "tcg" || meta["cpu"] != TCGCPU {
		t.Errorf("%s = %v, want memory %s, 1024 MiB, virtio-serial, tcg, %s", SnapshotMetaName, meta, mode, TCGCPU)
	}
	if v, _ := b.Version(ctx); meta["qemu_version"] != v {
		t.Errorf("recorded qemu_version = %v, want %q (Version)", meta["qemu_version"], v)
	}

	var dstDisks []hypervisor.Disk
	if mode == MemoryStream {
		// A fork: the copies are taken while the source is still paused
		// (QEMU flushed its disks when the migration completed), then the
		// source goes on running.
		for _, d := range srcDisks {
			p := filepath.Join(dstDir, filepath.Base(d.Path))
			if _, err := disk.Clone(d.Path, p); err != nil {
				t.Fatal(err)
			}
			d.Path = p
			dstDisks = append(dstDisks, d)
		}
		if err := pauser.Resume(ctx); err != nil {
			t.Fatalf("Resume() after a snapshot = %v", err)
		}
		if h := waitHealth(t, inst, src.ConsoleLog, 30*time.Second); h.UptimeMS < atSnapshot {
			t.Errorf("source uptime after resuming = %d, want at least %d", h.UptimeMS, atSnapshot)
		}
	} else {
		dstDisks = overlayDisks(t, []string{srcDisks[0].Path, srcDisks[1].Path}, disk.FormatRaw, dstDir)
	}
	srcPID := inst.PID()
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, srcPID, ns)
	delTap(t, ns, "tap0")
	addTap(t, ns, "tap1")
	dst := guestSpec(rt, "dst1", dstDir, "tap1", "02:fc:00:00:00:02", dstDisks)

	restoreRefusals(t, b, dst, snap, ns)

	t2 := time.Now()
	rinst, err := b.Restore(ctx, dst, snap)
	if err != nil {
		t.Fatalf("Restore() = %v", err)
	}
	t.Cleanup(func() { rinst.Kill() })
	restored := time.Since(t2)
	h2 := waitHealth(t, rinst, dst.ConsoleLog, time.Minute)
	answered := time.Since(t2)
	t.Logf("%s restore: Restore returned after %v, agent answered after %v, uptime %d ms (%d ms at the snapshot)",
		mode, restored.Round(time.Millisecond), answered.Round(time.Millisecond), h2.UptimeMS, atSnapshot)
	if h2.UptimeMS < atSnapshot {
		t.Errorf("uptime after the restore = %d ms, want at least the %d ms of the snapshot (a restore continues, a boot starts at 0)", h2.UptimeMS, atSnapshot)
	}
	if mode == MemoryShared {
		// Removing the template's RAM file is safe while restores map it:
		// they keep its pages (the guest goes on below). Changing it in
		// place would not be: they would read the new bytes.
		if err := os.Remove(filepath.Join(snap, SnapshotMemoryName)); err != nil {
			t.Fatal(err)
		}
	}
	if h2.Hostname != "src1" || h2.SSHHostKeys[0] != h1.SSHHostKeys[0] {
		t.Errorf("restored guest = %s with host key %q, want the snapshot's src1 with %q", h2.Hostname, h2.SSHHostKeys[0], h1.SSHHostKeys[0])
	}
	if data, _ := os.ReadFile(dst.ConsoleLog); bytes.Contains(data, []byte("Linux version")) {
		t.Errorf("the restored VM's console shows a kernel boot, want none")
	}
	out = sshRun(t, ns, rt.key, h1.SSHHostKeys[0], `cat /root/restored-marker; pgrep -x sleep >/dev/null && echo sleep-runs; cat /sys/class/net/eth0/address; echo written > /root/after-restore; sync`)
	for _, want := range []string{"from-the-source", "sleep-runs", "02:fc:00:00:00:01"} {
		if !strings.Contains(out, want) {
			t.Errorf("restored guest says %q, want %q in it", out, want)
		}
	}

	// A new daemon adopts the restored VM.
	adopted, err := (&Backend{Wrap: wrap, Log: testLogger(t)}).Attach(ctx, dst)
	if err != nil || adopted.PID() != rinst.PID() {
		t.Fatalf("Attach(restored VM) = %v, %v, want pid %d", adopted, err, rinst.PID())
	}
	if err := adopted.(hypervisor.Pauser).Pause(ctx); err != nil {
		t.Errorf("Pause() of the adopted VM = %v", err)
	}
	if err := adopted.(hypervisor.Pauser).Resume(ctx); err != nil {
		t.Errorf("Resume() of the adopted VM = %v", err)
	}
	h3 := waitHealth(t, adopted, dst.ConsoleLog, 30*time.Second)
	if h3.UptimeMS < h2.UptimeMS {
		t.Errorf("uptime after pause and resume = %d, want at least %d", h3.UptimeMS, h2.UptimeMS)
	}
	if mode == MemoryShared {
		// A restored VM (RAM private, over the template's file) snapshots
		// like any other: its RAM goes into the stream. Suspend and fork
		// of a warm VM need this.
		again := againRestore(t, b, adopted, dst, ns, h1.SSHHostKeys[0], rt)
		adopted = again
	}
	// A daemon that died in the middle of a restore leaves its marker: the
	// next daemon kills that QEMU rather than adopt a guest in an unknown state.
	pid := adopted.PID()
	dir := adopted.(*instance).spec.Dir
	if err := os.WriteFile(filepath.Join(dir, RestoringFile), []byte(snap+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := adopted.(*instance).spec
	if _, err := (&Backend{Wrap: wrap, Log: testLogger(t)}).Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) || !strings.Contains(err.Error(), "never finished") {
		t.Errorf("Attach(an unfinished restore) = %v, want ErrNotRunning saying the restore never finished", err)
	}
	checkGone(t, pid, ns)
	assertClean(t, dir, ns)

	if mode == MemoryStream {
		for p, want := range baseSums {
			if got := sha(t, p); got != want {
				t.Errorf("sha256 of base %s = %s after the guests wrote, want %s (unchanged)", p, got, want)
			}
		}
		if info, err := disk.ReadInfo(ctx, runner.Default, dstDisks[1].Path); err != nil || info.ActualSize < 64<<10 {
			t.Errorf("the restored VM's work overlay = %+v, %v, want the guest's writes in it", info, err)
		}
	}
}

// waitHealthUptime resumes a paused VM, reads its agent's uptime and pauses
// it again... the uptime the snapshot will carry, less the pause.
func waitHealthUptime(t *testing.T, inst hypervisor.Instance, p hypervisor.Pauser) int64 {
	t.Helper()
	ctx := context.Background()
	if err := p.Resume(ctx); err != nil {
		t.Fatalf("Resume() = %v", err)
	}
	return waitHealth(t, inst, "", 30*time.Second).UptimeMS
}

func ctxFor(parent context.Context, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(parent, d)
	context.AfterFunc(ctx, cancel)
	return ctx
}

func dirSizes(t testing.TB, dir string) map[string]int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = fi.Size()
	}
	return m
}

func readMeta(t testing.TB, dir string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, SnapshotMetaName))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// restoreRefusals checks that snapshots that do not fit are refused before
// anything starts, and that a load that fails once QEMU runs leaves
// nothing behind. It restores snap's files as it found them.
func restoreRefusals(t *testing.T, b *Backend, spec hypervisor.Spec, snap string, ns *vmtest.NS) {
	t.Helper()
	metaPath := filepath.Join(snap, SnapshotMetaName)
	orig, err := os.ReadFile(metaPath)
	if err != nil {
		t.Fatal(err)
	}
	editMeta := func(edit func(map[string]any)) {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(orig))
		dec.UseNumber() // keep mtime_ns exact
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		data, _ := json.Marshal(m)
		if err := os.WriteFile(metaPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	statePath := filepath.Join(snap, SnapshotStateName)
	tests := []struct {
		name    string
		prepare func(s *hypervisor.Spec)
		want    string
		started bool // qemu ran before the failure
	}{
		{"other memory size", func(s *hypervisor.Spec) { s.MemoryMiB = 2048 }, "the spec asks for 2 vCPUs and 2048 MiB", false},
		{"other qemu version", func(*hypervisor.Spec) {
			editMeta(func(m map[string]any) { m["qemu_version"] = "6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)" })
		}, "taken by qemu 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6) and this is", false},
		{"other cpu", func(*hypervisor.Spec) {
			editMeta(func(m map[string]any) { m["cpu"] = "Skylake-Server" })
		}, "cpu Skylake-Server, this host runs tcg with cpu " + TCGCPU, false},
		{"missing disk", func(s *hypervisor.Spec) { s.Disks = s.Disks[:1] }, "snapshot has disks root, work and the spec root", false},
		{"truncated state", func(*hypervisor.Spec) {
			data, err := os.ReadFile(statePath)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(statePath+".orig", data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(statePath, data[:len(data)/2], 0o600); err != nil {
				t.Fatal(err)
			}
		}, "loading the snapshot", true},
	}
	for _, tt := range tests {
		s := spec
		s.Disks = append([]hypervisor.Disk(nil), spec.Disks...)
		tt.prepare(&s)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		_, err := b.Restore(ctx, s, snap)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Restore(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		} else {
			t.Logf("Restore(%s) = %v", tt.name, err)
		}
		if _, cerr := os.Stat(s.ConsoleLog); !tt.started && cerr == nil {
			t.Errorf("Restore(%s) made %s: it should refuse before anything starts", tt.name, s.ConsoleLog)
		}
		assertClean(t, s.Dir, ns)
		if err := os.WriteFile(metaPath, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(statePath + ".orig"); err == nil {
			os.WriteFile(statePath, data, 0o600)
			os.Remove(statePath + ".orig")
		}
		os.Remove(s.ConsoleLog)
		os.Remove(filepath.Join(s.Dir, LogFile))
	}
}

// againRestore pauses and snapshots the restored VM inst (stream mode:
// its RAM is private), kills it and restores that snapshot onto other
// copies of its disks; the guest's marker process still runs.
func againRestore(t *testing.T, b *Backend, inst hypervisor.Instance, spec hypervisor.Spec, ns *vmtest.NS, hostKey string, rt runtimeFiles) hypervisor.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	snap2, dir2 := shortDir(t), shortDir(t)
	if err := inst.(hypervisor.Pauser).Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctx, snap2); err != nil {
		t.Fatalf("Snapshot(restored VM) = %v", err)
	}
	if m := readMeta(t, snap2); m["memory"] != MemoryStream {
		t.Errorf("snapshot of a restored VM has memory %v, want %s", m["memory"], MemoryStream)
	}
	pid := inst.PID()
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, pid, ns)
	var disks []hypervisor.Disk
	for _, d := range spec.Disks {
		p := filepath.Join(dir2, filepath.Base(d.Path))
		if _, err := disk.Clone(d.Path, p); err != nil {
			t.Fatal(err)
		}
		d.Path = p
		disks = append(disks, d)
	}
	spec2 := guestSpec(rt, "dst2", dir2, spec.NICs[0].TAP, "02:fc:00:00:00:03", disks)
	again, err := b.Restore(ctx, spec2, snap2)
	if err != nil {
		t.Fatalf("Restore(snapshot of a restored VM) = %v", err)
	}
	t.Cleanup(func() { again.Kill() })
	waitHealth(t, again, spec2.ConsoleLog, time.Minute)
	out := sshRun(t, ns, rt.key, hostKey, `cat /root/after-restore; pgrep -x sleep >/dev/null && echo sleep-runs`)
	if !strings.Contains(out, "written") || !strings.Contains(out, "sleep-runs") {
		t.Errorf("guest restored twice says %q, want its file and its sleep", out)
	}
	return again
}
