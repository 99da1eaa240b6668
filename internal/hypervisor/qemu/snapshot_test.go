package qemu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/hypervisor"
)

func TestLayoutRoundTrip(t *testing.T) {
	serial := &Backend{Accel: "tcg", vsock: func() bool { return false }}
	vsock := &Backend{Accel: "kvm", vsock: func() bool { return true }}
	base := testSpec()
	base.Disks = append(base.Disks, hypervisor.Disk{ID: "work", Path: "/v/a,b/work.qcow2", Format: hypervisor.DiskQcow2, ReadOnly: true})
	mem := base
	mem.MemoryFile = "/dev/shm/vm1,ram"
	restore := serial.layoutOf(base)
	restore.MemFile, restore.MemShared, restore.Incoming = "/snap/memory.ram", false, true
	tests := []struct {
		name string
		l    layout
	}{
		{"serial", serial.layoutOf(base)},
		{"vsock", vsock.layoutOf(base)},
		{"shared memory file", serial.layoutOf(mem)},
		{"restore of a template", restore},
	}
	for _, tt := range tests {
		argv := tt.l.argv("qemu-system-x86_64")
		got, err := parseLayout(argv)
		if err != nil {
			t.Errorf("parseLayout(%s argv) = %v, want nil", tt.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.l) {
			t.Errorf("parseLayout(%s argv) = %+v, want %+v", tt.name, got, tt.l)
		}
	}
}

func TestCommandMemoryFile(t *testing.T) {
	spec := testSpec()
	spec.MemoryFile = "/dev/shm/vm1.ram"
	spec.Disks[0].Format = hypervisor.DiskQcow2
	got := (&Backend{Accel: "tcg", vsock: func() bool { return false }}).Command(spec)
	for _, want := range [][]string{
		{"-M", Machine + ",memory-backend=microvm.ram"},
		{"-m", "1024", "-smp", "2", "-object", "memory-backend-file,id=microvm.ram,size=1024M,mem-path=/dev/shm/vm1.ram,share=on"},
		{"-drive", "id=root,file=/var/lib/banger/vm1/root.ext4,format=qcow2,if=none,cache=writeback,aio=threads,discard=unmap"},
	} {
		if !hasSeq(got, want) {
			t.Errorf("Command(memory file, qcow2) = %q, want it to contain %q", got, want)
		}
	}
	restore := (&Backend{Accel: "tcg", vsock: func() bool { return false }}).layoutOf(testSpec())
	restore.MemFile, restore.Incoming = "/snap/memory.ram", true
	got = restore.argv("qemu")
	for _, want := range [][]string{
		{"-object", "memory-backend-file,id=microvm.ram,size=1024M,mem-path=/snap/memory.ram,share=off"},
		{"-S", "-incoming", "defer", "-chardev", "socket,id=qmp,path=/run/banger/vm1/qmp.sock,server=on,wait=off"},
	} {
		if !hasSeq(got, want) {
			t.Errorf("argv(restore) = %q, want it to contain %q", got, want)
		}
	}
}

func TestParseLayoutRefuses(t *testing.T) {
	good := (&Backend{Accel: "tcg", vsock: func() bool { return false }}).Command(testSpec())
	with := func(extra ...string) []string { return append(slices.Clone(good), extra...) }
	replace := func(old, new string) []string {
		a := slices.Clone(good)
		a[slices.Index(a, old)] = new
		return a
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"foreign device", with("-device", "virtio-gpu-device"), "not a device banger makes"},
		{"foreign option", with("-vnc", ":0"), "unexpected option -vnc"},
		{"stray argument", with("stray"), `unexpected argument "stray"`},
		{"bad memory", replace("1024", "lots"), "not a size in MiB"},
		{"device without drive", replace("virtio-blk-device,drive=root", "virtio-blk-device,drive=other"), "names no drive"},
		{"memory backend without object", replace(Machine, Machine+",memory-backend=microvm.ram"), "do not match"},
		{"no kernel", slices.Delete(slices.Clone(good), slices.Index(good, "-kernel"), slices.Index(good, "-kernel")+2), "no machine"},
		{"empty", nil, "empty command line"},
		{"host folders", sharesArgv(), "cannot be snapshotted"},
	}
	for _, tt := range tests {
		_, err := parseLayout(tt.args)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseLayout(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022\n", "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", ""},
		{"QEMU emulator version 9.0.0\n", "9.0.0", ""},
		{"qemu-img version 7.2.22\n", "", "not \"QEMU emulator version"},
		{"", "", "not \"QEMU emulator version"},
	}
	for _, tt := range tests {
		got, err := parseVersion(tt.in)
		if got != tt.want || (tt.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("parseVersion(%q) = %q, %v, want %q, %q", tt.in, got, err, tt.want, tt.err)
		}
	}
	var v qmpVersion
	json.Unmarshal([]byte(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}`), &v)
	if got, want := v.String(), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"; got != want {
		t.Errorf("qmpVersion.String() = %q, want %q", got, want)
	}
}

// testMeta writes a kernel and initrd into dir and returns a snapshot
// record that fits testSpec on a serial TCG backend, with that spec.
func testMeta(t *testing.T, dir string) (snapshotMeta, hypervisor.Spec) {
	t.Helper()
	spec := testSpec()
	spec.Kernel, spec.Initrd = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	os.WriteFile(spec.Kernel, []byte("kernel"), 0o600)
	os.WriteFile(spec.Initrd, []byte("initrd"), 0o600)
	l := (&Backend{Accel: "tcg", vsock: func() bool { return false }}).layoutOf(spec)
	m, err := metaOf(l)
	if err != nil {
		t.Fatal(err)
	}
	m.QEMUVersion = "7.2.22 (Debian)"
	return m, spec
}

func TestSnapshotFits(t *testing.T) {
	dir := t.TempDir()
	tcg := &Backend{Accel: "tcg", vsock: func() bool { return false }}
	tests := []struct {
		name   string
		modify func(m *snapshotMeta, s *hypervisor.Spec, b **Backend)
		want   string // "" fits
	}{
		{"same", func(*snapshotMeta, *hypervisor.Spec, **Backend) {}, ""},
		{"new disk paths and a qcow2 overlay", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) {
			s.Disks[0].Path, s.Disks[0].Format = "/other/root.qcow2", hypervisor.DiskQcow2
		}, ""},
		{"new taps and macs", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) {
			s.NICs[0].TAP, s.NICs[0].MAC = "tap-9", "02:00:00:00:00:09"
		}, ""},
		{"kernel from the record", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.Kernel = "" }, ""},
		{"other memory", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.MemoryMiB = 2048 }, "1024 MiB, the spec asks for 2 vCPUs and 2048 MiB"},
		{"other vcpus", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.VCPUs = 1 }, "2 vCPUs and 1024 MiB, the spec asks for 1 vCPUs"},
		{"kvm host", func(_ *snapshotMeta, _ *hypervisor.Spec, b **Backend) {
			*b = &Backend{Accel: "kvm", vsock: func() bool { return false }}
		}, "snapshot is of a tcg VM with cpu Nehalem, this host runs kvm with cpu host"},
		{"vsock host", func(_ *snapshotMeta, _ *hypervisor.Spec, b **Backend) {
			*b = &Backend{Accel: "tcg", vsock: func() bool { return true }}
		}, "agent channel is virtio-serial, this host would use vsock"},
		{"other machine", func(m *snapshotMeta, _ *hypervisor.Spec, _ **Backend) { m.Machine = "microvm" }, `machine "microvm"`},
		{"kernel changed", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) {
			os.WriteFile(s.Kernel, []byte("a new kernel"), 0o600)
		}, "is not the one the snapshotted VM booted"},
		{"no initrd", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.Initrd = "" }, ""},
		{"extra disk", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) {
			s.Disks = append(s.Disks, hypervisor.Disk{ID: "data", Path: "/d"})
		}, "snapshot has disks root and the spec root, data"},
		{"read-only changed", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.Disks[0].ReadOnly = true }, "disk root was snapshotted read-only=false"},
		{"other nic", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.NICs[0].ID = "eth1" }, "snapshot has nics net0 and the spec eth1"},
		{"memory file", func(_ *snapshotMeta, s *hypervisor.Spec, _ **Backend) { s.MemoryFile = "/dev/shm/x" }, "leave MemoryFile empty"},
	}
	for _, tt := range tests {
		sub := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
		os.Mkdir(sub, 0o700)
		m, spec := testMeta(t, sub)
		b := tcg
		tt.modify(&m, &spec, &b)
		err := m.fits(spec, b.layoutOf(spec))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("fits(%s) = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("fits(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestRestoreLayout(t *testing.T) {
	m, spec := testMeta(t, t.TempDir())
	m.NICs[0].MAC = "02:aa:00:00:00:01"
	m.Cmdline = "console=ttyS0 ip=old"
	m.Memory = MemoryShared
	spec.ID, spec.Dir = "vm2", "/run/banger/vm2"
	spec.NICs[0].TAP, spec.NICs[0].MAC = "tap-vm2", "02:fc:00:00:00:02"
	spec.Kernel = ""
	l := m.restoreLayout(&Backend{Accel: "tcg", vsock: func() bool { return false }}, spec, "/snap")
	want := map[string]any{
		"name": "vm2", "tap": "tap-vm2", "mac": "02:fc:00:00:00:02", "cmdline": "console=ttyS0 ip=old",
		"kernel": m.Kernel.Path, "memfile": "/snap/memory.ram", "shared": false, "incoming": true,
	}
	got := map[string]any{
		"name": l.Name, "tap": l.NICs[0].TAP, "mac": l.NICs[0].MAC, "cmdline": l.Cmdline,
		"kernel": l.Kernel, "memfile": l.MemFile, "shared": l.MemShared, "incoming": l.Incoming,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("restoreLayout() = %v, want %v", got, want)
	}
}

// writeSnapshot writes m and the files of its memory mode into dir.
func writeSnapshot(t *testing.T, dir string, m snapshotMeta, edit func(map[string]any)) {
	t.Helper()
	data, _ := json.Marshal(m)
	var raw map[string]any
	json.Unmarshal(data, &raw)
	if edit != nil {
		edit(raw)
	}
	data, _ = json.Marshal(raw)
	if err := os.WriteFile(filepath.Join(dir, SnapshotMetaName), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReadSnapshot(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string, m snapshotMeta)
		want  string // "" reads fine
	}{
		{"complete", func(t *testing.T, dir string, m snapshotMeta) {
			writeSnapshot(t, dir, m, nil)
			os.WriteFile(filepath.Join(dir, SnapshotStateName), []byte("QEVM"), 0o600)
		}, ""},
		{"no metadata", func(t *testing.T, dir string, m snapshotMeta) {}, "holds no qemu snapshot"},
		{"no state", func(t *testing.T, dir string, m snapshotMeta) { writeSnapshot(t, dir, m, nil) }, "is incomplete"},
		{"other format", func(t *testing.T, dir string, m snapshotMeta) {
			writeSnapshot(t, dir, m, func(r map[string]any) { r["format"] = 2 })
		}, "format 2, want 1"},
		{"unknown field", func(t *testing.T, dir string, m snapshotMeta) {
			writeSnapshot(t, dir, m, func(r map[string]any) { r["balloon"] = true })
		}, `unknown field "balloon"`},
		{"bad mac", func(t *testing.T, dir string, m snapshotMeta) {
			m.NICs[0].MAC = "02:fc:00:00:00:01; rm -rf /"
			writeSnapshot(t, dir, m, nil)
		}, "is invalid"},
		{"shared without memory file", func(t *testing.T, dir string, m snapshotMeta) {
			m.Memory = MemoryShared
			writeSnapshot(t, dir, m, nil)
			os.WriteFile(filepath.Join(dir, SnapshotStateName), []byte("QEVM"), 0o600)
		}, "memory.ram: no such file"},
		{"shared with a short memory file", func(t *testing.T, dir string, m snapshotMeta) {
			m.Memory = MemoryShared
			writeSnapshot(t, dir, m, nil)
			os.WriteFile(filepath.Join(dir, SnapshotStateName), []byte("QEVM"), 0o600)
			os.WriteFile(filepath.Join(dir, SnapshotMemoryName), []byte("short"), 0o600)
		}, "has 5 bytes, not 1024 MiB"},
		{"too large", func(t *testing.T, dir string, m snapshotMeta) {
			os.WriteFile(filepath.Join(dir, SnapshotMetaName), make([]byte, maxMetaSize+1), 0o600)
		}, "larger than"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		m, _ := testMeta(t, dir)
		tt.setup(t, dir, m)
		_, err := readSnapshot(dir)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("readSnapshot(%s) = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("readSnapshot(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

// sharesArgv is the command line of a VM with a host folder.
func sharesArgv() []string {
	spec := testSpec()
	spec.Shares = []hypervisor.Share{{Tag: "banger0", Socket: "/run/banger/vm1/fs0.sock"}}
	return (&Backend{Accel: "tcg", vsock: func() bool { return false }}).Command(spec)
}
