package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/hypervisor/hypervisortest"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/store"
)

// newWarmHost is a test host whose fake hypervisor is QEMU-like: qcow2
// overlays, RAM in a memory file for templates, snapshots and restores;
// its runner plays qemu-img, and its images run an opencode server that
// takes a password.
func newWarmHost(t *testing.T) *testHost {
	h := newTestHost(t)
	h.fake.Qcow2, h.fake.MemoryFiles, h.autoWarm = true, true, true
	h.r.FakeQemuImg()
	h.r.Reply("debugfs -R cat "+opencode.SystemdUnit, runnertest.Reply{Out: "EnvironmentFile=" + opencode.EnvFile + "\n"})
	return h
}

// log records a create's progress.
type logProgress struct {
	NoProgress
	mu     sync.Mutex
	lines  []string
	stages []string
}

func (p *logProgress) Log(msg string) {
	p.mu.Lock()
	p.lines = append(p.lines, msg)
	p.mu.Unlock()
}

func (p *logProgress) Stage(name string, done bool, _ time.Duration) {
	if done {
		p.mu.Lock()
		p.stages = append(p.stages, name)
		p.mu.Unlock()
	}
}

func (p *logProgress) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

func (h *testHost) createWith(e *Engine, o CreateOptions) (*store.VM, *logProgress, error) {
	h.t.Helper()
	if o.Image == "" {
		o.Image = "minimal"
	}
	p, err := e.Plan(context.Background(), o)
	if err != nil {
		return nil, nil, err
	}
	pr := &logProgress{}
	v, err := e.Create(p, pr)
	return v, pr, err
}

// instanceOf finds the running fake instance of vm.
func (h *testHost) instanceOf(vm *store.VM) *hypervisortest.Instance {
	h.t.Helper()
	for _, i := range h.fake.Running() {
		if i.PID() == vm.PID {
			return i
		}
	}
	h.t.Fatalf("no running instance of %s (pid %d)", vm.Name, vm.PID)
	return nil
}

// waitWarm waits until image's snapshot is ready.
func waitWarm(t *testing.T, e *Engine, h *testHost, image string) {
	t.Helper()
	img, err := e.Images().Resolve(context.Background(), h.bundle, image)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := e.WarmStatus(context.Background(), h.bundle, img)
		if st.State == WarmReady {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s: warm state %+v, want ready", image, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWarmCreate: the first create boots cold and snapshots its image in
// the background; later creates restore the snapshot, onto overlays of the
// snapshot's disks, and give each guest an identity of its own.
func TestWarmCreate(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	first := h.mustCreate(e, "first")
	if first.DiskFormat != "qcow2" {
		t.Fatalf("disk format %q, want qcow2 overlays", first.DiskFormat)
	}
	for _, p := range []string{RootDisk(first), WorkDisk(first)} {
		base, err := disk.Backing(p)
		if err != nil || !strings.HasPrefix(base, filepath.Join(h.dir, "data", "bases")+"/") {
			t.Errorf("Backing(%s) = %q, %v; want a base of banger's", p, base, err)
		}
	}
	waitWarm(t, e, h, "minimal")
	starts := h.fake.Starts()
	if starts != 2 {
		t.Errorf("boots after the first create = %d, want 2 (the VM and its image's template)", starts)
	}
	tmpl := e.latestTemplate("minimal")
	// Its guest's host keys are recorded: a restore's identity goes first
	// and must replace them.
	if len(tmpl.HostKeys) != 1 || !strings.HasPrefix(tmpl.HostKeys[0], "ssh-ed25519 ") {
		t.Errorf("template host keys = %q, want the template guest's one key", tmpl.HostKeys)
	}
	// Its sshd waits for the new host keys of each restore's identity.
	if parked, err := hypervisortest.SnapshotSSHParked(tmpl.snapshot()); err != nil || !parked {
		t.Errorf("the template's snapshot has sshd parked = %v, %v; want it parked", parked, err)
	}

	type seen struct {
		vm *store.VM
		g  hypervisortest.Guest
	}
	var vms []seen
	for _, name := range []string{"warm1", "warm2"} {
		h.r.Reset()
		v, pr, err := h.createWith(e, CreateOptions{Name: name})
		if err != nil {
			t.Fatalf("warm create %s: %v", name, err)
		}
		inst := h.instanceOf(v)
		if !inst.Restored() {
			t.Fatalf("%s booted, want a restore of the snapshot", name)
		}
		if got := strings.Join(pr.stages, ","); got != "preparing disks,network,restoring qemu,new identity,waiting for ssh" {
			t.Errorf("%s stages = %s", name, got)
		}
		for _, which := range []string{"root", "work"} {
			p := filepath.Join(v.Dir, diskName(which, v.DiskFormat))
			if base, err := disk.Backing(p); err != nil || base != tmpl.disk(which) {
				t.Errorf("%s's %s disk reads from %q, %v; want the template's", name, which, base, err)
			}
		}
		// The template's machine is gone: nothing to hide the guest from
		// until it has its own identity, and a TAP brought up late costs
		// its first packets.
		if calls := strings.Join(h.r.Calls(), "\n"); strings.Contains(calls, "ip link set dev "+v.TAP+" down") {
			t.Errorf("%s's TAP device was held down: want it up from the start of a template's restore:\n%s", name, calls)
		}
		g := inst.Guest()
		if g.Hostname != name || g.IP.String() != v.IP || g.MAC != v.MAC || g.Grown == 0 || g.Clock.IsZero() || len(g.Entropy) != 1 {
			t.Errorf("%s's guest = %+v, want its own name, address %s, MAC %s, grown disks, a set clock and a reseeded RNG", name, g, v.IP, v.MAC)
		}
		if g.SSHParked {
			t.Errorf("%s's sshd is still parked after its identity", name)
		}
		if g.OpencodePassword == "" || g.OpencodePassword != opencode.Password(v.Dir) {
			t.Errorf("%s's opencode password in the guest %q, on the host %q: want the VM's own", name, g.OpencodePassword, opencode.Password(v.Dir))
		}
		known, _ := os.ReadFile(h.known.Path)
		if !strings.Contains(string(known), name+".vm "+authorizedLine(g.HostKey())) {
			t.Errorf("known_hosts lacks %s's new host key:\n%s", name, known)
		}
		if _, err := os.Stat(filepath.Join(v.Dir, identityPending)); err == nil {
			t.Errorf("%s: the pending identity mark is left", name)
		}
		vms = append(vms, seen{v, g})
	}
	if h.fake.Starts() != starts || h.fake.Restores() != 2 {
		t.Errorf("boots %d, restores %d after two warm creates; want %d and 2", h.fake.Starts(), h.fake.Restores(), starts)
	}
	a, b := vms[0].g, vms[1].g
	if a.BootID != b.BootID {
		t.Errorf("the warm guests' boot ids differ (%s, %s): each was booted, not restored from one snapshot", a.BootID, b.BootID)
	}
	for what, pair := range map[string][2]string{
		"address": {a.IP.String(), b.IP.String()}, "MAC": {a.MAC, b.MAC}, "hostname": {a.Hostname, b.Hostname},
		"machine-id": {a.MachineID, b.MachineID}, "host key": {authorizedLine(a.HostKey()), authorizedLine(b.HostKey())},
		"opencode password": {a.OpencodePassword, b.OpencodePassword}, "entropy": {a.Entropy[0], b.Entropy[0]},
	} {
		if pair[0] == pair[1] {
			t.Errorf("the two warm VMs share their %s %q", what, pair[0])
		}
	}
}

// TestWarmFallsBackCold: a snapshot that does not fit is never restored:
// the VM boots cold and the create says why; so does one whose restore
// fails, leaving one VM.
func TestWarmFallsBackCold(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	h.mustCreate(e, "first")
	waitWarm(t, e, h, "minimal")
	for _, tt := range []struct {
		name   string
		o      CreateOptions
		setup  func()
		reason string
	}{
		{"more memory", CreateOptions{MemoryMiB: 1024}, nil, "512 MiB, this VM has 2 vCPUs and 1024 MiB"},
		{"bigger disk", CreateOptions{DiskSize: 64 << 20}, nil, "root disk"},
		{"a failed restore", CreateOptions{}, func() {
			h.fake.Misbehave(hypervisortest.Behavior{FailRestore: errors.New("the load went wrong")})
		}, "restoring the snapshot of image minimal failed"},
		{"changed kernel", CreateOptions{}, func() {
			later := time.Now().Add(time.Hour)
			os.Chtimes(h.bundle.Path(h.bundle.Kernel), later, later)
		}, "the bundle's kernel changed since the snapshot was taken"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
				defer h.fake.Misbehave(hypervisortest.Behavior{})
			}
			tt.o.Name = strings.ReplaceAll(tt.name, " ", "-")
			restores := h.fake.Restores()
			v, pr, err := h.createWith(e, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			if got := pr.text(); !strings.Contains(got, "cold boot: ") || !strings.Contains(got, tt.reason) {
				t.Errorf("progress %q, want a cold boot because of %q", got, tt.reason)
			}
			if h.instanceOf(v).Restored() || h.fake.Restores() != restores {
				t.Errorf("%s was restored, want a cold boot", v.Name)
			}
			if vms, _ := e.List(context.Background()); slices.IndexFunc(vms, func(x store.VM) bool { return x.Name == v.Name }) < 0 || countDirs(filepath.Join(h.dir, "data", "vms")) != len(vms) {
				t.Errorf("after the fallback: %d VMs, %d VM dirs", len(vms), countDirs(filepath.Join(h.dir, "data", "vms")))
			}
		})
	}
}

func countDirs(dir string) int {
	ents, _ := os.ReadDir(dir)
	return len(ents)
}

// TestSuspendResumeAcrossRestart: a suspended VM has no hypervisor, keeps
// its state over a daemon restart, and resumes as it was: same identity,
// what ran in it still there, the clock set.
func TestSuspendResumeAcrossRestart(t *testing.T) {
	h := newWarmHost(t)
	e1 := h.engine()
	v := h.mustCreate(e1, "sleepy")
	inst := h.instanceOf(v)
	inst.SetFile("/proc/sleep", "sleep 1000")
	before := inst.Guest()
	s, err := e1.Suspend("sleepy")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != StateSuspended || s.PID != 0 || len(h.fake.Running()) != 0 || !suspended(s) {
		t.Fatalf("after suspend: %+v, %d running; want suspended, no hypervisor, its snapshot kept", s, len(h.fake.Running()))
	}
	if _, err := e1.Suspend("sleepy"); err != nil {
		t.Errorf("second suspend = %v, want nothing to do", err)
	}
	e1.Close()
	e2 := h.engine()
	if err := e2.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := e2.Get(context.Background(), "sleepy"); got.State != StateSuspended {
		t.Fatalf("after a daemon restart: %s, want suspended", got.State)
	}
	pr := &logProgress{}
	r, err := e2.Start("sleepy", pr)
	if err != nil {
		t.Fatal(err)
	}
	ri := h.instanceOf(r)
	g := ri.Guest()
	if !ri.Restored() || g.Files["/proc/sleep"] != "sleep 1000" || g.BootID != before.BootID {
		t.Errorf("resumed guest %+v: want the restore of the one suspended, with what ran in it", g)
	}
	if g.Hostname != before.Hostname || g.MachineID != before.MachineID || authorizedLine(g.HostKey()) != authorizedLine(before.HostKey()) || g.Clock.IsZero() {
		t.Errorf("resumed guest changed identity or kept its clock: %+v, was %+v", g, before)
	}
	if got := strings.Join(pr.stages, ","); got != "network,restoring qemu,clock and entropy,waiting for ssh" {
		t.Errorf("resume stages = %s", got)
	}
	if suspended(r) {
		t.Error("the resumed VM's snapshot is left")
	}
	if _, err := e2.Resume("sleepy", nil); err != nil {
		t.Errorf("resume of a running VM = %v, want nothing to do", err)
	}
	// A stop of a suspended VM discards its memory: the next start boots.
	if _, err := e2.Suspend("sleepy"); err != nil {
		t.Fatal(err)
	}
	if v, err := e2.Stop("sleepy"); err != nil || v.State != StateStopped || suspended(v) {
		t.Fatalf("stop of a suspended VM = %+v, %v; want stopped without its snapshot", v, err)
	}
	restores := h.fake.Restores()
	if v, err := e2.Start("sleepy", nil); err != nil || h.instanceOf(v).Restored() || h.fake.Restores() != restores {
		t.Errorf("start after that = %v; want a cold boot", err)
	}
	if _, err := e2.Stop("sleepy"); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.Resume("sleepy", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("resume of a stopped VM = %v, want ErrInvalid", err)
	}
}

// TestSuspendFailureKeepsRunning: a suspend that cannot snapshot leaves
// the VM running, its guest unpaused.
func TestSuspendFailureKeepsRunning(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	v := h.mustCreate(e, "box")
	// Snapshotted behind the engine's back and not run since, the guest
	// refuses another snapshot, as QEMU does.
	inst := h.instanceOf(v)
	inst.Pause(context.Background())
	dir := t.TempDir()
	if err := inst.Snapshot(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Suspend("box"); err == nil || !strings.Contains(err.Error(), "keeps running") {
		t.Fatalf("suspend after a snapshot nobody resumed = %v, want a failure that keeps it running", err)
	}
	got, _ := e.Get(context.Background(), "box")
	if got.State != StateRunning || inst.Exited() || suspended(got) {
		t.Errorf("after a failed suspend: %s, exited %v; want running", got.State, inst.Exited())
	}
	if _, err := e.Suspend("box"); err != nil {
		t.Errorf("suspend once the guest ran again = %v", err)
	}
}

// TestFork: the copy runs what the source ran, from the source's disks and
// memory, with its own identity; the source goes on.
func TestFork(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	h.mustCreate(e, "src")
	allow := egress.Policy{Mode: egress.ModeAllow, Allow: mustList(t, "192.0.2.0/24")}
	src, err := e.Set("src", SetOptions{Egress: &allow})
	if err != nil {
		t.Fatal(err)
	}
	si := h.instanceOf(src)
	si.SetFile("/root/work", "half done")
	before := si.Guest()
	fp, err := e.PlanFork(context.Background(), "src", "copy")
	if err != nil {
		t.Fatal(err)
	}
	pr := &logProgress{}
	cp, err := e.Fork(fp, pr)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Egress != src.Egress || !cp.NAT || cp.WorkSizeBytes != src.WorkSizeBytes || cp.WorkSizeBytes == 0 || cp.Kernel != src.Kernel {
		t.Errorf("the copy has egress %q, nat %v, /root %d, kernel %q; want the source's %q, true, %d, %q",
			cp.Egress, cp.NAT, cp.WorkSizeBytes, cp.Kernel, src.Egress, src.WorkSizeBytes, src.Kernel)
	}
	ci := h.instanceOf(cp)
	g := ci.Guest()
	if !ci.Restored() || g.Files["/root/work"] != "half done" || g.BootID != before.BootID {
		t.Errorf("the copy %+v: want a restore of the source with its files", g)
	}
	if g.Hostname != "copy" || g.IP.String() != cp.IP || g.MachineID == before.MachineID || authorizedLine(g.HostKey()) == authorizedLine(before.HostKey()) ||
		g.OpencodePassword == "" || g.OpencodePassword == opencode.Password(src.Dir) {
		t.Errorf("the copy %+v kept something of the source's identity %+v", g, before)
	}
	if got := strings.Join(pr.stages, ","); got != "snapshotting src,preparing disks,network,restoring qemu,waiting for agent,new identity,waiting for ssh" {
		t.Errorf("fork stages = %s", got)
	}
	for _, which := range []string{"root", "work"} {
		a, _ := disk.Backing(filepath.Join(src.Dir, diskName(which, src.DiskFormat)))
		b, _ := disk.Backing(filepath.Join(cp.Dir, diskName(which, cp.DiskFormat)))
		if a == "" || a != b {
			t.Errorf("the copy's %s disk reads from %q, the source's from %q: want the same base", which, b, a)
		}
	}
	calls := strings.Join(h.r.Calls(), "\n")
	down, up := strings.Index(calls, "ip link set dev "+cp.TAP+" down"), strings.Index(calls, "ip link set dev "+cp.TAP+" up")
	if si.Exited() || down < 0 || up < down {
		t.Errorf("source exited %v, or the copy's TAP device was not held down until the copy had its identity:\n%s", si.Exited(), calls)
	}
	if sg := si.Guest(); sg.Hostname != "src" || sg.IP.String() != src.IP || sg.MachineID != before.MachineID {
		t.Errorf("the source changed: %+v", sg)
	}
	// The source runs on: paused no more, it answers ssh.
	if _, err := h.fake.Dial(context.Background(), "tcp", src.IP+":22"); err != nil {
		t.Errorf("the source does not answer after the fork: %v", err)
	}
	if entries, _ := os.ReadDir(cp.Dir); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".fork") }) {
		t.Error("the fork's snapshot is left in the copy's directory")
	}
	// A second fork works: the source ran between them.
	if fp, err := e.PlanFork(context.Background(), "src", "copy2"); err != nil {
		t.Fatal(err)
	} else if _, err := e.Fork(fp, nil); err != nil {
		t.Fatalf("second fork: %v", err)
	}
}

// TestRefusalsChangeNothing: a fork of a VM whose agent cannot take an
// identity, a fork of a stopped VM and of a taken name are refused; a warm
// guest that keeps its old host keys fails its create.
func TestRefusalsChangeNothing(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	h.fake.Misbehave(hypervisortest.Behavior{OldAgent: true})
	old := h.mustCreate(e, "old")
	h.fake.Misbehave(hypervisortest.Behavior{})
	h.mustCreate(e, "new")
	ctx := context.Background()
	count := func() int { vms, _ := e.List(ctx); return len(vms) }
	n := count()
	if fp, err := e.PlanFork(ctx, "old", "c1"); err != nil {
		t.Fatal(err)
	} else if _, err := e.Fork(fp, nil); err == nil || !strings.Contains(err.Error(), "older than this banger") {
		t.Errorf("fork of an old agent's VM = %v, want a refusal", err)
	}
	if _, err := e.PlanFork(ctx, "new", "old"); !errors.Is(err, ErrExists) {
		t.Errorf("fork onto a taken name = %v, want ErrExists", err)
	}
	if _, err := e.PlanFork(ctx, "ghost", "c2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("fork of a missing VM = %v, want ErrNotFound", err)
	}
	e.Stop("new")
	if _, err := e.PlanFork(ctx, "new", "c3"); !errors.Is(err, ErrInvalid) {
		t.Errorf("fork of a stopped VM = %v, want ErrInvalid", err)
	}
	if _, err := e.Suspend("new"); !errors.Is(err, ErrInvalid) {
		t.Errorf("suspend of a stopped VM = %v, want ErrInvalid", err)
	}
	if count() != n || countDirs(filepath.Join(h.dir, "data", "vms")) != n {
		t.Errorf("refusals left %d VMs and %d dirs, want %d", count(), countDirs(filepath.Join(h.dir, "data", "vms")), n)
	}
	if h.instanceOf(old).Exited() {
		t.Error("the refused fork's source stopped")
	}
	// A warm guest that keeps its keys would pass for the template.
	waitWarm(t, e, h, "minimal")
	h.fake.Misbehave(hypervisortest.Behavior{KeepHostKeys: true})
	defer h.fake.Misbehave(hypervisortest.Behavior{})
	if _, _, err := h.createWith(e, CreateOptions{Name: "twin"}); err == nil || !strings.Contains(err.Error(), "kept an SSH host key") {
		t.Errorf("warm create of a guest that keeps its keys = %v, want a failure", err)
	}
	if v, _ := e.Get(ctx, "twin"); v == nil || v.State != StateError || len(h.fake.Running()) != 1 {
		t.Errorf("the failed warm VM: %+v, %d running; want it in the error state, its hypervisor gone", v, len(h.fake.Running()))
	}
}

// TestImageDeleteAndCollect: an image that VMs' disks are overlays over is
// not deleted; once they are gone its snapshot and bases go with it.
func TestImageDeleteAndCollect(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	ctx := context.Background()
	dir := t.TempDir()
	root := filepath.Join(dir, "root.ext4")
	if err := ext4.WriteMagic(root, 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Images().Register(ctx, h.bundle, RegisterOptions{Name: "mine", Rootfs: root}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.createWith(e, CreateOptions{Name: "m1", Image: "mine"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Warm(ctx, "mine", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.createWith(e, CreateOptions{Name: "m2", Image: "mine"}); err != nil {
		t.Fatal(err)
	}
	err := e.DeleteImage(ctx, h.bundle, "mine")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "m1, m2") {
		t.Fatalf("delete of an image in use = %v, want a refusal naming m1 and m2", err)
	}
	for _, name := range []string{"m1", "m2"} {
		if err := e.Delete(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.DeleteImage(ctx, h.bundle, "mine"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"templates", "vms"} {
		if n := countDirs(filepath.Join(h.dir, "data", d)); n != 0 {
			t.Errorf("data/%s holds %d entries after every VM and the image went, want none", d, n)
		}
	}
	// The base of the bundle's work-seed stays for the bundle's images.
	if got, _ := filepath.Glob(filepath.Join(h.dir, "data", "bases", "root-*")); len(got) != 0 {
		t.Errorf("bases of the deleted image's rootfs = %q, want none", got)
	}
	if _, err := os.Stat(root); err != nil {
		t.Errorf("the registered image's file: %v; banger never removes it", err)
	}
}

// TestBaseKeptAcrossCreates: a registered image's base (a copy, which
// costs what the image holds) is made once, at image register; deleting
// the last VM over it keeps it, so every create makes only its overlays.
func TestBaseKeptAcrossCreates(t *testing.T) {
	h := newWarmHost(t)
	h.autoWarm = false
	e := h.engine()
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "big.ext4")
	if err := ext4.WriteMagic(root, 8<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := e.RegisterImage(ctx, h.bundle, RegisterOptions{Name: "big", Rootfs: root}); err != nil {
		t.Fatal(err)
	}
	// The copy is made at register time: even the first create reuses it.
	kept, _ := filepath.Glob(filepath.Join(h.dir, "data", "bases", "big-*.base"))
	if len(kept) != 1 {
		t.Fatalf("bases of image big after image register = %q, want one", kept)
	}
	bases := []string{kept[0]}
	for i, name := range []string{"c1", "c2", "c3"} {
		h.r.Reset()
		v, _, err := h.createWith(e, CreateOptions{Name: name, Image: "big", Cold: true})
		if err != nil {
			t.Fatal(err)
		}
		base, err := disk.Backing(RootDisk(v))
		if err != nil {
			t.Fatal(err)
		}
		if base != bases[0] {
			t.Errorf("create %d's base = %s, want %s, the first create's", i+1, base, bases[0])
		}
		for _, c := range h.r.Calls() {
			if strings.Contains(c, "e2fsck") || strings.Contains(c, "resize2fs") || strings.Contains(c, "qemu-img convert") {
				t.Errorf("create %d ran %q, which costs what the image holds", i+1, c)
			}
		}
		if err := e.Delete(name); err != nil {
			t.Fatal(err)
		}
		// Still there, the next create reuses it instead of copying again.
		if _, err := os.Stat(base); err != nil {
			t.Errorf("base of image big after deleting its last VM: %v, want it kept", err)
		}
	}
	// A changed file gets a new base; the old one, unread, goes.
	if err := os.Chtimes(root, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	v, _, err := h.createWith(e, CreateOptions{Name: "c4", Image: "big", Cold: true})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := disk.Backing(RootDisk(v)); b == bases[0] {
		t.Errorf("base after the image file changed = %s, want a new one", b)
	}
	if err := e.Delete("c4"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bases[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stat(%s) after its image file changed = %v, want it removed", bases[0], err)
	}
}

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// TestWarmRawDisks: on a backend that takes raw files only (Firecracker),
// a VM's disks are raw clones (a reflink where the filesystem has them,
// else a sparse copy), and warm creates, forks, suspends and resumes work
// on them as on overlays.
func TestWarmRawDisks(t *testing.T) {
	h := newTestHost(t)
	h.fake.Qcow2, h.fake.MemoryFiles, h.autoWarm = false, false, true
	e := h.engine()
	first := h.mustCreate(e, "first")
	if first.DiskFormat != "raw" || filepath.Base(RootDisk(first)) != "rootfs.ext4" {
		t.Fatalf("disk format %q (%s), want raw clones", first.DiskFormat, RootDisk(first))
	}
	waitWarm(t, e, h, "minimal")
	tmpl := e.latestTemplate("minimal")
	v, pr, err := h.createWith(e, CreateOptions{Name: "warm1"})
	if err != nil {
		t.Fatal(err)
	}
	if !h.instanceOf(v).Restored() || !slices.Contains(pr.stages, "restoring qemu") {
		t.Fatalf("warm1 stages %v, want a restore", pr.stages)
	}
	for _, which := range []string{"root", "work"} {
		p := filepath.Join(v.Dir, diskName(which, v.DiskFormat))
		got, err := headOf(p)
		want, werr := headOf(tmpl.disk(which))
		if err != nil || werr != nil || got != want {
			t.Errorf("warm1's %s disk %s: %v, %v; want a clone of the template's", which, p, err, werr)
		}
	}
	h.instanceOf(v).SetFile("/root/work", "raw")
	fp, err := e.PlanFork(context.Background(), "warm1", "copy")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := e.Fork(fp, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cp.DiskFormat != "raw" || h.instanceOf(cp).Guest().Files["/root/work"] != "raw" {
		t.Errorf("fork of warm1: format %s, files %v; want raw disks and warm1's file", cp.DiskFormat, h.instanceOf(cp).Guest().Files)
	}
	if _, err := e.Suspend("copy"); err != nil {
		t.Fatal(err)
	}
	r, err := e.Resume("copy", nil)
	if err != nil || r.State != StateRunning || h.instanceOf(r).Guest().Files["/root/work"] != "raw" {
		t.Fatalf("resume of copy = %+v, %v; want it running with its file", r, err)
	}
}

// headOf is the size of the file at path and its first KiB.
func headOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	b := make([]byte, 1024)
	n, _ := f.Read(b)
	return fmt.Sprintf("%d:%x", fi.Size(), b[:n]), nil
}

// TestWarmSkipsHostFolders: a VM with host folders boots cold even where a
// snapshot fits (the template has no file-sharing devices), and it cannot
// be suspended or forked (QEMU cannot save virtio-fs); refusals change
// nothing.
func TestWarmSkipsHostFolders(t *testing.T) {
	h := newWarmHost(t)
	e := h.engine()
	h.mustCreate(e, "first")
	waitWarm(t, e, h, "minimal")
	src, _, _ := folders(t)
	v, pr, err := h.createWith(e, CreateOptions{Name: "shared", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}})
	if err != nil {
		t.Fatal(err)
	}
	if log := pr.text(); !strings.Contains(log, "cold boot: host folders need a fresh boot") || slices.Contains(pr.stages, "restoring qemu") {
		t.Errorf("a create with host folders: progress %q, stages %q; want a cold boot that says why", log, pr.stages)
	}
	if _, err := e.Suspend("shared"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "has host folders") {
		t.Errorf("Suspend(a VM with host folders) = %v, want ErrInvalid saying why", err)
	}
	if _, err := e.PlanFork(context.Background(), "shared", "copy"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "has host folders") {
		t.Errorf("PlanFork(a VM with host folders) = %v, want ErrInvalid saying why", err)
	}
	if got, _ := e.Get(context.Background(), "shared"); got.State != StateRunning || got.ID != v.ID {
		t.Errorf("after the refusals the VM is %+v, want it running as before", got)
	}
}
