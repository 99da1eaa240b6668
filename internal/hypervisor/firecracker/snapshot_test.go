package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/firecracker/fctest"
)

// snapshotOf boots spec on the fake, pauses it and snapshots it into a new
// directory, which it returns with the guest's health before the pause. The
// VM stays paused.
func snapshotOf(t *testing.T, b Backend, spec hypervisor.Spec) (hypervisor.Instance, string, map[string]any) {
	t.Helper()
	inst := startFake(t, b, spec)
	h := health(t, inst)
	if err := inst.(hypervisor.Pauser).Pause(ctxT(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	dir := t.TempDir()
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctxT(t), dir); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return inst, dir, h
}

// restoreSpec is a spec for a restore of testSpec's VM: a new id and
// directory, copies of the disks, another TAP.
func restoreSpec(t *testing.T, id, tap string) hypervisor.Spec {
	t.Helper()
	s := testSpec(t)
	s.ID = id
	s.NICs[0].TAP = tap
	s.NICs[0].MAC = "06:00:0a:00:00:99"
	return s
}

func readMeta(t *testing.T, dir string) snapshotMeta {
	t.Helper()
	m, err := readSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func writeMeta(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, SnapshotMetaName)
	data, _ := os.ReadFile(path)
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	data, _ = json.Marshal(m)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotAndRestore(t *testing.T) {
	b := fakeBackend(t)
	src := testSpec(t)
	srcInst, snapDir, before := snapshotOf(t, b, src)

	ents, _ := os.ReadDir(snapDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{SnapshotMetaName, SnapshotMemoryName, SnapshotStateName}; !reflect.DeepEqual(names, want) {
		t.Errorf("snapshot directory holds %q, want %q", names, want)
	}
	wantMeta := snapshotMeta{
		Format:             snapshotFormat,
		FirecrackerVersion: fctest.Version,
		VCPUs:              2,
		MemoryMiB:          512,
		Drives: []snapshotDrive{
			{ID: "root", Path: src.Disks[0].Path, Root: true},
			{ID: "work", Path: src.Disks[1].Path},
		},
		NICs:  []snapshotNIC{{ID: "eth0", TAP: "tap-test0", MAC: "06:00:0a:00:00:02"}},
		Vsock: snapshotVsock{GuestCID: 3, UDSPath: filepath.Join(src.Dir, VsockSocketName)},
	}
	if got := readMeta(t, snapDir); !reflect.DeepEqual(got, wantMeta) {
		t.Errorf("snapshot metadata = %+v, want %+v", got, wantMeta)
	}
	// Suspend: the snapshotted VM ends; its disks stay.
	if err := srcInst.Kill(); err != nil {
		t.Fatal(err)
	}

	dst := restoreSpec(t, "vm-restored", "tap-test1")
	inst, err := b.Restore(ctxT(t), dst, snapDir)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { inst.Kill() })

	// The guest is the snapshotted one, reached through the new socket.
	h := health(t, inst)
	if h["hostname"] != src.ID || !reflect.DeepEqual(h["ssh_host_keys"], before["ssh_host_keys"]) {
		t.Errorf("restored guest = %v, want the snapshotted guest %v", h, before)
	}
	if up, was := h["uptime_ms"].(float64), before["uptime_ms"].(float64); up < was {
		t.Errorf("restored uptime %vms < %vms before the snapshot: the guest was booted, not restored", up, was)
	}

	calls, err := fctest.ReadJournal(dst.Dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"PUT /logger", "GET /version", "PUT /snapshot/load", "PATCH /drives/root", "PATCH /drives/work", "PATCH /vm"}
	if got := fctest.Succeeded(calls); !reflect.DeepEqual(got, want) {
		t.Errorf("restore calls = %q, want %q", got, want)
	}
	bodies := map[string]string{}
	for _, c := range calls {
		bodies[c.String()] = c.Body
	}
	var load SnapshotLoad
	if err := json.Unmarshal([]byte(bodies["PUT /snapshot/load"]), &load); err != nil {
		t.Fatal(err)
	}
	wantLoad := SnapshotLoad{
		SnapshotPath:     filepath.Join(snapDir, SnapshotStateName),
		MemBackend:       MemBackend{BackendType: "File", BackendPath: filepath.Join(snapDir, SnapshotMemoryName)},
		NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap-test1"}},
		VsockOverride:    &VsockOverride{UDSPath: filepath.Join(dst.Dir, VsockSocketName)},
	}
	if !reflect.DeepEqual(load, wantLoad) {
		t.Errorf("snapshot/load body = %+v, want %+v", load, wantLoad)
	}
	if got := bodies["PATCH /vm"]; got != `{"state":"Resumed"}` {
		t.Errorf("PATCH /vm body = %s, want Resumed", got)
	}

	c := NewClient(filepath.Join(dst.Dir, APISocketName))
	defer c.Close()
	cfg, err := c.VMConfig(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range cfg.Drives {
		if d.PathOnHost != dst.Disks[i].Path {
			t.Errorf("restored drive %s is on %s, want %s", d.DriveID, d.PathOnHost, dst.Disks[i].Path)
		}
	}
	if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != "tap-test1" {
		t.Errorf("restored interfaces = %+v, want eth0 on tap-test1", cfg.NetworkInterfaces)
	}
	pidFile, _ := os.ReadFile(filepath.Join(dst.Dir, PIDFileName))
	if got := strings.TrimSpace(string(pidFile)); got != strconv.Itoa(inst.PID()) {
		t.Errorf("pid file = %q, want %d", got, inst.PID())
	}

	// A new daemon adopts the restored VM.
	adopted, err := Backend{Binary: b.Binary, Log: b.Log}.Attach(ctxT(t), dst)
	if err != nil {
		t.Fatalf("Attach to the restored VM: %v", err)
	}
	if adopted.PID() != inst.PID() {
		t.Errorf("adopted PID() = %d, want %d", adopted.PID(), inst.PID())
	}
	health(t, adopted)
	if err := adopted.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := inst.Wait(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	assertGone(t, dst)
}

func TestSnapshotOfRestoredVM(t *testing.T) {
	b := fakeBackend(t)
	src := testSpec(t)
	srcInst, snap1, _ := snapshotOf(t, b, src)
	srcInst.Kill()
	mid := restoreSpec(t, "vm-mid", "tap-mid")
	inst, err := b.Restore(ctxT(t), mid, snap1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill() })
	if err := inst.(hypervisor.Pauser).Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	snap2 := t.TempDir()
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctxT(t), snap2); err != nil {
		t.Fatal(err)
	}
	m := readMeta(t, snap2)
	if m.Drives[0].Path != mid.Disks[0].Path || m.NICs[0].TAP != "tap-mid" || m.Vsock.UDSPath != filepath.Join(mid.Dir, VsockSocketName) {
		t.Errorf("snapshot of the restored VM records %+v, want its own disks, tap and socket", m)
	}
	inst.Kill()
	last := restoreSpec(t, "vm-last", "tap-last")
	inst2, err := b.Restore(ctxT(t), last, snap2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst2.Kill() })
	if h := health(t, inst2); h["hostname"] != src.ID {
		t.Errorf("twice-restored hostname = %v, want %s", h["hostname"], src.ID)
	}
}

// Warm creates restore one snapshot into several VMs at once; Firecracker
// only reads the snapshot's files, so nothing serializes them.
func TestConcurrentRestoresOfOneSnapshot(t *testing.T) {
	b := fakeBackend(t)
	src, snapDir, _ := snapshotOf(t, b, testSpec(t))
	src.Kill()
	specs := []hypervisor.Spec{restoreSpec(t, "vm-a", "tap-a"), restoreSpec(t, "vm-b", "tap-b"), restoreSpec(t, "vm-c", "tap-c")}
	insts := make([]hypervisor.Instance, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = b.Restore(ctxT(t), specs[i], snapDir)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Restore(%s): %v", specs[i].ID, err)
		}
		t.Cleanup(func() { insts[i].Kill() })
		health(t, insts[i])
	}
}

func TestPauseResume(t *testing.T) {
	spec := testSpec(t)
	inst := startFake(t, fakeBackend(t), spec)
	p := inst.(hypervisor.Pauser)
	c := NewClient(filepath.Join(spec.Dir, APISocketName))
	defer c.Close()
	if err := p.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Instance(ctxT(t)); info.State != StatePaused {
		t.Errorf("state after Pause = %q, want %q", info.State, StatePaused)
	}
	if _, err := inst.DialAgent(ctxT(t)); err == nil {
		t.Error("the agent of a paused guest answered")
	}
	if err := p.Resume(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	health(t, inst)
	inst.Kill()
	for name, fn := range map[string]func(context.Context) error{"Pause": p.Pause, "Resume": p.Resume} {
		if err := fn(ctxT(t)); !errors.Is(err, hypervisor.ErrNotRunning) {
			t.Errorf("%s after Kill = %v, want ErrNotRunning", name, err)
		}
	}
}

func TestSnapshotRefusals(t *testing.T) {
	b := fakeBackend(t)
	spec := testSpec(t)
	inst := startFake(t, b, spec)
	s := inst.(hypervisor.Snapshotter)
	full := t.TempDir()
	touch(t, full, "leftover")
	tests := []struct {
		name string
		dir  string
		want string
	}{
		{"running, not paused", t.TempDir(), "must be paused"},
		{"directory not empty", full, "is not empty (it holds leftover)"},
		{"relative directory", "snaps/1", "not an absolute path"},
		{"no directory", filepath.Join(t.TempDir(), "missing"), "no such file"},
	}
	for _, tt := range tests {
		err := s.Snapshot(ctxT(t), tt.dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "snapshotting "+spec.ID) {
			t.Errorf("Snapshot(%s) = %v, want an error naming the VM and containing %q", tt.name, err, tt.want)
		}
		if ents, _ := os.ReadDir(tt.dir); tt.dir != full && len(ents) > 0 {
			t.Errorf("Snapshot(%s) left %d files in %s", tt.name, len(ents), tt.dir)
		}
	}
	// The refusals changed nothing: the guest still runs.
	health(t, inst)
	inst.Kill()
	if err := s.Snapshot(ctxT(t), t.TempDir()); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Snapshot after Kill = %v, want ErrNotRunning", err)
	}
}

func TestRestoreFailuresCleanUp(t *testing.T) {
	b := fakeBackend(t)
	tests := []struct {
		name string
		// modify breaks the snapshot in dir (of the VM src) or the spec.
		modify func(t *testing.T, dir string, src hypervisor.Spec, spec *hypervisor.Spec)
		want   []string
	}{
		{"missing memory file", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			os.Remove(filepath.Join(dir, SnapshotMemoryName))
		}, []string{"reading the snapshot", "is incomplete", SnapshotMemoryName}},
		{"memory file not firecracker's", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			os.WriteFile(filepath.Join(dir, SnapshotMemoryName), []byte("garbage"), 0o600)
		}, []string{"loading the snapshot", "not a memory file made by this fake"}},
		{"no metadata", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			os.Remove(filepath.Join(dir, SnapshotMetaName))
		}, []string{"holds no firecracker snapshot"}},
		{"metadata of another format", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			writeMeta(t, dir, func(m map[string]any) { m["format"] = 2 })
		}, []string{"format 2, want 1", "take a new snapshot"}},
		{"metadata with unknown fields", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			writeMeta(t, dir, func(m map[string]any) { m["kernel"] = "/boot/vmlinux" })
		}, []string{`unknown field "kernel"`}},
		{"another firecracker version", func(t *testing.T, dir string, _ hypervisor.Spec, _ *hypervisor.Spec) {
			writeMeta(t, dir, func(m map[string]any) { m["firecracker_version"] = "1.15.0" })
		}, []string{"checking the firecracker version", "taken by firecracker 1.15.0 and this is " + fctest.Version}},
		{"unknown iface", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.NICs[0].ID = "eth1"
		}, []string{`no network interface "eth1" (it has eth0)`}},
		{"extra nic", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.NICs = append(spec.NICs, hypervisor.NIC{ID: "eth1", TAP: "tap-x"})
		}, []string{`no network interface "eth1"`}},
		{"unknown disk", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.Disks[1].ID = "data"
		}, []string{`no drive "data" (it has root, work)`}},
		{"missing disk", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.Disks = spec.Disks[:1]
		}, []string{"drives root, work and the spec 1 disks"}},
		{"qcow2 overlay", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.Disks[1].Format = hypervisor.DiskQcow2
		}, []string{"checking the spec", "is qcow2: firecracker takes raw files only"}},
		{"read-only changed", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.Disks[1].ReadOnly = true
		}, []string{"drive work was snapshotted with root=false read-only=false"}},
		{"other memory size", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.MemoryMiB = 1024
		}, []string{"2 vCPUs and 512 MiB, the spec asks for 2 vCPUs and 1024 MiB"}},
		{"recorded disk vanished", func(t *testing.T, _ string, src hypervisor.Spec, _ *hypervisor.Spec) {
			os.Remove(src.Disks[0].Path)
		}, []string{"checking the snapshotted disks", "drive root's file " + "ROOT", "is gone", "keep the snapshotted VM's disks"}},
		{"new disk missing", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.Disks[1].Path = filepath.Join(spec.Dir, "missing.ext4")
		}, []string{"pointing the drives at the VM's disks", "PATCH /drives/work: firecracker says: path_on_host"}},
		{"bad spec", func(t *testing.T, _ string, _ hypervisor.Spec, spec *hypervisor.Spec) {
			spec.AgentCID = 1
		}, []string{"checking the spec", "agent CID 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := testSpec(t)
			srcInst, dir, _ := snapshotOf(t, b, src)
			srcInst.Kill()
			spec := restoreSpec(t, "vm-restored", "tap-test1")
			tt.modify(t, dir, src, &spec)
			inst, err := b.Restore(ctxT(t), spec, dir)
			if err == nil {
				inst.Kill()
				t.Fatal("Restore succeeded")
			}
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "ROOT", src.Disks[0].Path)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Restore(%s) = %q, want it to contain %q", tt.name, err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "firecracker: ") || !strings.Contains(err.Error(), "vm-restored") {
				t.Errorf("Restore(%s) = %q, want it to name the backend and the VM", tt.name, err)
			}
			assertGone(t, spec)
		})
	}
}

func TestAttachToUnfinishedRestore(t *testing.T) {
	b := fakeBackend(t)
	srcInst, dir, _ := snapshotOf(t, b, testSpec(t))
	srcInst.Kill()
	tests := []struct {
		name    string
		patched bool // the restore pointed the drives at the VM's disks
	}{
		{"drives on the snapshot's disks", false},
		{"drives on the VM's disks", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A daemon that died inside Restore: loaded, never resumed.
			spec := restoreSpec(t, "vm-restored", "tap-test1")
			l := newLaunch(spec)
			if err := b.spawn(ctxT(t), l); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.rollback() })
			c := l.inst.client
			err := c.LoadSnapshot(ctxT(t), SnapshotLoad{
				SnapshotPath:  filepath.Join(dir, SnapshotStateName),
				MemBackend:    MemBackend{BackendType: "File", BackendPath: filepath.Join(dir, SnapshotMemoryName)},
				VsockOverride: &VsockOverride{UDSPath: l.p.vsock},
			})
			if err != nil {
				t.Fatal(err)
			}
			if tt.patched {
				for _, d := range spec.Disks {
					if err := c.PatchDrive(ctxT(t), PartialDrive{DriveID: d.ID, PathOnHost: d.Path}); err != nil {
						t.Fatal(err)
					}
				}
			}
			inst, err := Backend{Binary: b.Binary, Log: b.Log}.Attach(ctxT(t), spec)
			if !tt.patched {
				if !errors.Is(err, hypervisor.ErrNotRunning) || !strings.Contains(err.Error(), "restore from a snapshot never finished") {
					t.Fatalf("Attach = %v, want ErrNotRunning saying the restore never finished", err)
				}
				if err := l.inst.Wait(ctxT(t)); err != nil {
					t.Fatalf("the unfinished restore still runs: %v", err)
				}
				assertGone(t, spec)
				return
			}
			if err != nil {
				t.Fatalf("Attach to a paused, finished restore = %v, want it adopted", err)
			}
			// Adopted as it was, paused; the daemon decides to resume it.
			if _, err := inst.DialAgent(ctxT(t)); err == nil {
				t.Error("the agent answered before Resume")
			}
			if err := inst.(hypervisor.Pauser).Resume(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			health(t, inst)
		})
	}
}

func TestVersion(t *testing.T) {
	if v, err := fakeBackend(t).Version(ctxT(t)); err != nil || v != fctest.Version {
		t.Errorf("Version() of the fake = %q, %v, want %q", v, err, fctest.Version)
	}
	tests := []struct {
		script string
		want   string // the version, or the error's substring after "ERR "
	}{
		{"echo 'Firecracker v1.16.1'; echo; echo 'Supported snapshot data format versions: v8.0.0'", "1.16.1"},
		{"echo 'Firecracker v1.17.0-dev'", "1.17.0-dev"},
		{"echo 'firecracker 1.16.1'", `ERR printed "firecracker 1.16.1"`},
		{"echo 'Firecracker v1'", `ERR printed "Firecracker v1"`},
		{"exit 3", "ERR exit status 3"},
	}
	for _, tt := range tests {
		bin := filepath.Join(t.TempDir(), "firecracker")
		os.WriteFile(bin, []byte("#!/bin/sh\n"+tt.script+"\n"), 0o755)
		v, err := Backend{Binary: bin}.Version(ctxT(t))
		if msg, isErr := strings.CutPrefix(tt.want, "ERR "); isErr {
			if err == nil || !strings.Contains(err.Error(), msg) {
				t.Errorf("Version() after %q = %q, %v, want an error containing %q", tt.script, v, err, msg)
			}
		} else if err != nil || v != tt.want {
			t.Errorf("Version() after %q = %q, %v, want %q", tt.script, v, err, tt.want)
		}
	}
	if _, err := (Backend{Binary: "/nonexistent/firecracker"}).Version(ctxT(t)); err == nil {
		t.Error("Version() without a binary succeeded")
	}
}

func TestUnpatchedDrive(t *testing.T) {
	spec := hypervisor.Spec{Disks: []hypervisor.Disk{{ID: "root", Path: "/vm/root"}, {ID: "work", Path: "/vm/work"}}}
	tests := []struct {
		drives []Drive
		want   string
	}{
		{[]Drive{{DriveID: "root", PathOnHost: "/vm/root"}, {DriveID: "work", PathOnHost: "/vm/work"}}, ""},
		{[]Drive{{DriveID: "root", PathOnHost: "/vm/root"}, {DriveID: "work", PathOnHost: "/snap/work"}}, "work"},
		{[]Drive{{DriveID: "root", PathOnHost: "/snap/root"}}, "root"},
		// A drive Firecracker does not report is no proof of anything.
		{nil, ""},
	}
	for _, tt := range tests {
		if got := unpatchedDrive(VMConfig{Drives: tt.drives}, spec); got != tt.want {
			t.Errorf("unpatchedDrive(%+v) = %q, want %q", tt.drives, got, tt.want)
		}
	}
}

// A Restore whose ctx has ended starts nothing that outlives it.
func TestRestoreHonoursContext(t *testing.T) {
	b := fakeBackend(t)
	srcInst, dir, _ := snapshotOf(t, b, testSpec(t))
	srcInst.Kill()
	spec := restoreSpec(t, "vm-restored", "tap-test1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	inst, err := b.Restore(ctx, spec, dir)
	if err == nil {
		inst.Kill()
	}
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("Restore with a cancelled context = %v, want context.Canceled", err)
	}
	assertGone(t, spec)
}
