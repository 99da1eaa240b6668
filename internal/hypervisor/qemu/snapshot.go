package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/runner"
)

// Files of a snapshot directory.
const (
	// SnapshotStateName is QEMU's migration stream: device state, and the
	// guest's RAM unless it lives in SnapshotMemoryName.
	SnapshotStateName = "state.mig"
	// SnapshotMemoryName is the guest RAM of a VM that ran with its memory
	// in a shared file (Spec.MemoryFile): Snapshot moves that file here,
	// and each restore maps it privately, sharing its pages until it
	// writes them. It must never be changed or truncated while a restored
	// VM runs; removing it is safe (the restores keep the pages).
	SnapshotMemoryName = "memory.ram"
	// SnapshotMetaName is banger's record of the snapshotted machine.
	SnapshotMetaName = "qemu-snapshot.json"
)

// RestoringFile marks a restore in progress in Spec.Dir: Attach kills a
// QEMU whose restore never finished.
const RestoringFile = "qemu-restoring"

// Memory modes of a snapshot.
const (
	// MemoryStream copies guest RAM into the migration stream.
	MemoryStream = "stream"
	// MemoryShared keeps guest RAM in SnapshotMemoryName (x-ignore-shared).
	MemoryShared = "shared"
)

// snapshotFormat is the version of the SnapshotMetaName format.
const snapshotFormat = 1

// maxMetaSize bounds what Restore reads of a metadata file.
const maxMetaSize = 1 << 20

// migrationTimeout bounds a snapshot or a restore's load when the caller's
// context has no deadline of its own.
const migrationTimeout = 5 * time.Minute

var (
	_ hypervisor.Pauser      = (*instance)(nil)
	_ hypervisor.Snapshotter = (*instance)(nil)
	_ hypervisor.Restorer    = (*Backend)(nil)
)

// snapshotMeta is the content of SnapshotMetaName: the machine a restore
// must rebuild, device for device.
type snapshotMeta struct {
	Format      int            `json:"format"`
	QEMUVersion string         `json:"qemu_version"`
	Machine     string         `json:"machine"`
	CPU         string         `json:"cpu"`
	Accel       string         `json:"accel"`
	MemoryMiB   int            `json:"memory_mib"`
	VCPUs       int            `json:"vcpus"`
	Memory      string         `json:"memory"`
	Kernel      snapshotFile   `json:"kernel"`
	Initrd      *snapshotFile  `json:"initrd,omitempty"`
	Cmdline     string         `json:"cmdline"`
	Disks       []snapshotDisk `json:"disks"`
	NICs        []snapshotNIC  `json:"nics"`
	Agent       string         `json:"agent"`
	AgentCID    uint32         `json:"agent_cid,omitempty"`
}

// snapshotFile identifies a file the guest booted from (kernel, initrd):
// the guest runs what it loaded then, so a restore insists on the same.
type snapshotFile struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

// snapshotDisk is a disk of the snapshotted VM: Path is only a record, a
// restore opens spec's disks (copies of these, raw or an overlay).
type snapshotDisk struct {
	ID       string                `json:"id"`
	Path     string                `json:"path"`
	Format   hypervisor.DiskFormat `json:"format"`
	ReadOnly bool                  `json:"read_only"`
}

// snapshotNIC is a NIC of the snapshotted VM. MAC is the guest's own at
// the snapshot (QEMU's receive filter), which the restored guest keeps.
type snapshotNIC struct {
	ID  string `json:"id"`
	MAC string `json:"mac"`
}

// Pause implements hypervisor.Pauser: QMP stop.
func (i *instance) Pause(ctx context.Context) error {
	if i.Exited() {
		return fmt.Errorf("pausing vm %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	if err := i.qmp(ctx, func(c *qmpClient) error { return c.Execute(ctx, "stop", nil, nil) }); err != nil {
		return fmt.Errorf("pausing vm %s: %w", i.spec.ID, err)
	}
	return nil
}

// Resume implements hypervisor.Pauser: QMP cont. It refuses a VM whose
// memory file was moved into a snapshot, since running it would change
// the snapshot under every VM restored from it.
func (i *instance) Resume(ctx context.Context) error {
	if i.Exited() {
		return fmt.Errorf("resuming vm %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	l, err := i.layout()
	if err != nil {
		return fmt.Errorf("resuming vm %s: %w", i.spec.ID, err)
	}
	if l.MemShared {
		if _, err := os.Stat(l.MemFile); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("resuming vm %s: its memory file %s was moved into a snapshot, which it would change: kill the VM instead", i.spec.ID, l.MemFile)
		}
	}
	if err := i.qmp(ctx, func(c *qmpClient) error { return c.Execute(ctx, "cont", nil, nil) }); err != nil {
		return fmt.Errorf("resuming vm %s: %w", i.spec.ID, err)
	}
	return nil
}

// layout reads the running QEMU's machine from its command line.
func (i *instance) layout() (layout, error) {
	args, err := proc.Cmdline(i.pid)
	if err != nil {
		return layout{}, fmt.Errorf("reading the command line of qemu pid %d: %w", i.pid, err)
	}
	l, err := parseLayout(args)
	if err != nil {
		return l, fmt.Errorf("reading the command line of qemu pid %d: %w", i.pid, err)
	}
	return l, nil
}

// Snapshot implements hypervisor.Snapshotter. It migrates the paused VM
// into SnapshotStateName in dir ("exec:cat > FILE": QEMU 7.2 has no file:
// URI) and writes SnapshotMetaName. A VM with its RAM in a shared file
// (Spec.MemoryFile) is migrated with x-ignore-shared, so the stream holds
// no RAM, and the file is moved to SnapshotMemoryName: from then on the
// instance must not run again (Resume refuses), only be killed. The VM
// stays paused; on failure dir is left empty.
func (i *instance) Snapshot(ctx context.Context, dir string) (err error) {
	t0 := time.Now()
	fail := func(step string, err error) error {
		return fmt.Errorf("qemu: snapshotting vm %s into %s: %s: %w", i.spec.ID, dir, step, err)
	}
	if i.Exited() {
		return fail("checking the VM", hypervisor.ErrNotRunning)
	}
	if err := emptyDir(dir); err != nil {
		return fail("checking the directory", err)
	}
	l, err := i.layout()
	if err != nil {
		return fail("reading the machine", err)
	}
	if l.Incoming {
		if _, err := os.Stat(filepath.Join(i.spec.Dir, RestoringFile)); err == nil {
			return fail("checking the VM", errors.New("its restore has not finished"))
		}
	}
	meta, err := metaOf(l)
	if err != nil {
		return fail("recording the machine", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, migrationTimeout)
		defer cancel()
	}
	state, mem, metaPath := filepath.Join(dir, SnapshotStateName), filepath.Join(dir, SnapshotMemoryName), filepath.Join(dir, SnapshotMetaName)
	moved := false
	defer func() {
		if err != nil {
			// dir was empty: these are ours.
			os.Remove(state)
			os.Remove(metaPath)
			if moved {
				if os.Rename(mem, l.MemFile) != nil {
					os.Remove(mem)
				}
			} else {
				os.Remove(mem)
			}
		}
	}()
	// The stream's file is made private first; the shell's > keeps its mode.
	if err := createPrivate(state); err != nil {
		return fail("creating "+SnapshotStateName, err)
	}
	err = i.qmp(ctx, func(c *qmpClient) error {
		var st qmpStatus
		if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
			return fmt.Errorf("reading the run state: %w", err)
		}
		if st.Status == "postmigrate" {
			return errors.New("the VM was snapshotted and has not run since (qemu migrates a VM once per run): use that snapshot, or resume the VM first")
		}
		if st.Running || st.Status != "paused" {
			return fmt.Errorf("the VM is %s, not paused: pause it first", st.Status)
		}
		var v qmpVersion
		if err := c.Execute(ctx, "query-version", nil, &v); err != nil {
			return fmt.Errorf("reading the qemu version: %w", err)
		}
		meta.QEMUVersion = v.String()
		for k, n := range meta.NICs {
			var filters []struct {
				Name    string `json:"name"`
				MainMAC string `json:"main-mac"`
			}
			// QEMU names NICs by model and creation order (-device order).
			name := fmt.Sprintf("virtio-net-device.%d", k)
			if err := c.Execute(ctx, "query-rx-filter", map[string]string{"name": name}, &filters); err != nil {
				return fmt.Errorf("reading the MAC of nic %s: %w", n.ID, err)
			}
			if len(filters) != 1 || filters[0].Name != name || !macRE.MatchString(filters[0].MainMAC) {
				return fmt.Errorf("reading the MAC of nic %s: qemu answered %+v", n.ID, filters)
			}
			meta.NICs[k].MAC = filters[0].MainMAC
		}
		if err := setIgnoreShared(ctx, c, meta.Memory == MemoryShared); err != nil {
			return err
		}
		// QEMU writes the stream into the file itself, through a descriptor
		// passed over the monitor, so that a failed write (a full disk)
		// fails the migration. With "exec:cat > FILE" it does not: QEMU
		// never learns that cat failed and reports the migration completed.
		f, err := os.OpenFile(state, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		err = c.SendFD(ctx, migrationFD, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("passing %s to qemu: %w", SnapshotStateName, err)
		}
		if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + migrationFD}, nil); err != nil {
			c.Execute(context.WithoutCancel(ctx), "closefd", map[string]string{"fdname": migrationFD}, nil)
			return fmt.Errorf("starting the migration: %w", err)
		}
		if err := waitMigration(ctx, c); err != nil {
			c.Execute(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
			return err
		}
		return nil
	})
	if err != nil {
		return fail("migrating to "+SnapshotStateName, err)
	}
	if err := syncFile(state, true); err != nil {
		return fail("writing "+SnapshotStateName, err)
	}
	if meta.Memory == MemoryShared {
		if err := os.Rename(l.MemFile, mem); err == nil {
			moved = true
		} else if errors.Is(err, syscall.EXDEV) {
			// Another filesystem: copy (sparsely); the VM keeps its own.
			if _, err := disk.Clone(l.MemFile, mem); err != nil {
				return fail("copying the memory file", err)
			}
		} else {
			return fail("moving the memory file", err)
		}
		if err := syncFile(mem, false); err != nil {
			return fail("writing "+SnapshotMemoryName, err)
		}
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return fail("encoding "+SnapshotMetaName, err)
	}
	if err := atomicfile.Write(metaPath, append(data, '\n'), 0o600); err != nil {
		return fail("writing "+SnapshotMetaName, err)
	}
	i.b.log().Info("qemu snapshot written", "vm", i.spec.ID, "dir", dir, "memory", meta.Memory, "elapsed", time.Since(t0))
	return nil
}

// macRE is a MAC address as QEMU prints it.
var macRE = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

// qmpVersion is the reply to query-version.
type qmpVersion struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

// String renders the version as Version does from qemu --version.
func (v qmpVersion) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
	if p := strings.TrimSpace(v.Package); p != "" {
		s += " (" + strings.TrimSuffix(strings.TrimPrefix(p, "("), ")") + ")"
	}
	return s
}

// setIgnoreShared sets the x-ignore-shared migration capability: shared
// RAM (a memory-backend-file with share=on) is not sent, and a restore
// takes it from the file it maps instead.
func setIgnoreShared(ctx context.Context, c *qmpClient, on bool) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return fmt.Errorf("setting x-ignore-shared=%v: %w", on, err)
	}
	return nil
}

// qmpMigration is the part of the reply to query-migrate banger reads.
type qmpMigration struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
}

// waitMigration polls query-migrate until the migration completed, failed
// or ctx ended.
func waitMigration(ctx context.Context, c *qmpClient) error {
	delay := 2 * time.Millisecond
	for {
		var m qmpMigration
		if err := c.Execute(ctx, "query-migrate", nil, &m); err != nil {
			return fmt.Errorf("reading the migration status: %w", err)
		}
		switch m.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			why := m.ErrorDesc
			if why == "" {
				why = "no reason given (see the qemu log)"
			}
			return fmt.Errorf("the migration %s: %s", m.Status, clip(why, 500))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the migration is still %q: %w", m.Status, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// migrationFD is the name of the state file's descriptor in QEMU.
const migrationFD = "banger-state"

// createPrivate makes an empty 0600 file at path (which must not exist).
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// syncFile flushes path to disk; nonEmpty also insists that it has data.
func syncFile(path string, nonEmpty bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if nonEmpty {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.Size() == 0 {
			return fmt.Errorf("%s is empty after the migration (see the qemu log)", path)
		}
	}
	return f.Sync()
}

// emptyDir checks that dir is an absolute path to an empty directory.
func emptyDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%q is not an absolute path", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("%s is not empty (it holds %s): snapshot into a new directory", dir, names[0])
	}
	return nil
}

// metaOf records the machine of a running QEMU, less what only QMP knows
// (the version, the guest's MACs).
func metaOf(l layout) (snapshotMeta, error) {
	m := snapshotMeta{
		Format:    snapshotFormat,
		Machine:   l.Machine,
		CPU:       l.CPU,
		Accel:     l.Accel,
		MemoryMiB: l.MemoryMiB,
		VCPUs:     l.VCPUs,
		Memory:    MemoryStream,
		Cmdline:   l.Cmdline,
		Agent:     l.Agent,
	}
	if l.Agent == agentVsock {
		m.AgentCID = l.CID
	}
	if l.MemFile != "" && l.MemShared {
		m.Memory = MemoryShared
	}
	var err error
	if m.Kernel, err = identify(l.Kernel); err != nil {
		return m, fmt.Errorf("the kernel the VM booted: %w", err)
	}
	if l.Initrd != "" {
		f, err := identify(l.Initrd)
		if err != nil {
			return m, fmt.Errorf("the initrd the VM booted: %w", err)
		}
		m.Initrd = &f
	}
	for _, d := range l.Disks {
		m.Disks = append(m.Disks, snapshotDisk{ID: d.ID, Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly})
	}
	for _, n := range l.NICs {
		m.NICs = append(m.NICs, snapshotNIC{ID: n.ID, MAC: n.MAC})
	}
	return m, nil
}

// identify records a file's path, size and modification time.
func identify(path string) (snapshotFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return snapshotFile{}, err
	}
	if !fi.Mode().IsRegular() {
		return snapshotFile{}, fmt.Errorf("%s is not a file", path)
	}
	return snapshotFile{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}, nil
}

// check validates a record read back from disk.
func (m snapshotMeta) check() error {
	if m.Format != snapshotFormat {
		return fmt.Errorf("format %d, want %d", m.Format, snapshotFormat)
	}
	if m.QEMUVersion == "" || m.Machine == "" || m.CPU == "" || m.Accel == "" {
		return errors.New("no qemu version, machine, cpu or accelerator")
	}
	if m.VCPUs < 1 || m.MemoryMiB < 1 {
		return fmt.Errorf("%d vCPUs and %d MiB", m.VCPUs, m.MemoryMiB)
	}
	if m.Memory != MemoryStream && m.Memory != MemoryShared {
		return fmt.Errorf("memory mode %q", m.Memory)
	}
	if !filepath.IsAbs(m.Kernel.Path) || m.Initrd != nil && !filepath.IsAbs(m.Initrd.Path) {
		return errors.New("no absolute kernel or initrd path")
	}
	if m.Agent != agentSerial && m.Agent != agentVsock {
		return fmt.Errorf("agent channel %q", m.Agent)
	}
	seen := map[string]bool{}
	for _, d := range m.Disks {
		if !qemuID.MatchString(d.ID) || seen[d.ID] || !d.Format.Valid() {
			return fmt.Errorf("disk %q (format %q) is invalid or appears twice", d.ID, d.Format)
		}
		seen[d.ID] = true
	}
	seen = map[string]bool{}
	for _, n := range m.NICs {
		if !qemuID.MatchString(n.ID) || seen[n.ID] || !macRE.MatchString(n.MAC) {
			return fmt.Errorf("nic %q (mac %q) is invalid or appears twice", n.ID, n.MAC)
		}
		seen[n.ID] = true
	}
	return nil
}

// readSnapshot reads and checks the snapshot in dir.
func readSnapshot(dir string) (snapshotMeta, error) {
	var m snapshotMeta
	if !filepath.IsAbs(dir) {
		return m, fmt.Errorf("snapshot directory %q is not absolute", dir)
	}
	path := filepath.Join(dir, SnapshotMetaName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("%s holds no qemu snapshot (no %s): take the snapshot with qemu, or boot cold", dir, SnapshotMetaName)
	}
	if err != nil {
		return m, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return m, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxMetaSize {
		return m, fmt.Errorf("%s is larger than %d bytes", path, maxMetaSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("decoding %s: %w (take a new snapshot)", path, err)
	}
	if dec.More() {
		return m, fmt.Errorf("decoding %s: data after the object (take a new snapshot)", path)
	}
	if err := m.check(); err != nil {
		return m, fmt.Errorf("%s is not usable: %w (take a new snapshot)", path, err)
	}
	files := []string{SnapshotStateName}
	if m.Memory == MemoryShared {
		files = append(files, SnapshotMemoryName)
	}
	for _, name := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return m, fmt.Errorf("the snapshot in %s is incomplete: %w (take a new snapshot)", dir, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return m, fmt.Errorf("the snapshot in %s is incomplete: %s is not a file with data (take a new snapshot)", dir, name)
		}
		if name == SnapshotMemoryName && fi.Size() != int64(m.MemoryMiB)<<20 {
			return m, fmt.Errorf("the snapshot in %s is damaged: %s has %d bytes, not %d MiB (take a new snapshot)", dir, name, fi.Size(), m.MemoryMiB)
		}
	}
	return m, nil
}

// fits checks that spec, on this backend, describes the snapshotted
// machine: QEMU loads device state into a machine built the same way,
// device for device, and only the files behind the devices may differ.
// A disk may change format (a raw template disk restored through a qcow2
// overlay over it): the block layer is not part of the stream.
func (m snapshotMeta) fits(spec hypervisor.Spec, now layout) error {
	redo := "boot it cold, or take a new snapshot"
	if spec.MemoryFile != "" {
		return errors.New("a restored VM's memory is private to it: leave MemoryFile empty")
	}
	if now.Accel != m.Accel || now.CPU != m.CPU {
		return fmt.Errorf("the snapshot is of a %s VM with cpu %s, this host runs %s with cpu %s: %s", m.Accel, m.CPU, now.Accel, now.CPU, redo)
	}
	if now.Machine != m.Machine {
		return fmt.Errorf("the snapshot is of machine %q, this banger builds %q: %s", m.Machine, now.Machine, redo)
	}
	if spec.VCPUs != m.VCPUs || spec.MemoryMiB != m.MemoryMiB {
		return fmt.Errorf("the snapshot is of a VM with %d vCPUs and %d MiB, the spec asks for %d vCPUs and %d MiB: %s",
			m.VCPUs, m.MemoryMiB, spec.VCPUs, spec.MemoryMiB, redo)
	}
	if now.Agent != m.Agent {
		return fmt.Errorf("the snapshot's agent channel is %s, this host would use %s: %s", m.Agent, now.Agent, redo)
	}
	if err := sameFile("kernel", spec.Kernel, &m.Kernel); err != nil {
		return err
	}
	if m.Initrd == nil && spec.Initrd != "" {
		return fmt.Errorf("the snapshotted VM booted without an initrd and the spec gives %s: %s", spec.Initrd, redo)
	}
	if m.Initrd != nil {
		if err := sameFile("initrd", spec.Initrd, m.Initrd); err != nil {
			return err
		}
	}
	ids := func(n int, id func(int) string) string {
		var s []string
		for k := range n {
			s = append(s, id(k))
		}
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	snapDisks := ids(len(m.Disks), func(k int) string { return m.Disks[k].ID })
	specDisks := ids(len(spec.Disks), func(k int) string { return spec.Disks[k].ID })
	if snapDisks != specDisks {
		return fmt.Errorf("the snapshot has disks %s and the spec %s, in guest order: give the restore a copy of each disk, in the same order", snapDisks, specDisks)
	}
	for k, d := range spec.Disks {
		if d.ReadOnly != m.Disks[k].ReadOnly {
			return fmt.Errorf("disk %s was snapshotted read-only=%v, the spec asks read-only=%v: %s", d.ID, m.Disks[k].ReadOnly, d.ReadOnly, redo)
		}
	}
	snapNICs := ids(len(m.NICs), func(k int) string { return m.NICs[k].ID })
	specNICs := ids(len(spec.NICs), func(k int) string { return spec.NICs[k].ID })
	if snapNICs != specNICs {
		return fmt.Errorf("the snapshot has nics %s and the spec %s, in guest order: give the restore a TAP for each", snapNICs, specNICs)
	}
	return nil
}

// sameFile checks that path is the file the snapshot recorded (size and
// modification time: the guest runs what it loaded at boot); an empty
// path means the recorded one.
func sameFile(what, path string, rec *snapshotFile) error {
	if path == "" {
		path = rec.Path
	}
	f, err := identify(path)
	if err != nil {
		return fmt.Errorf("the snapshotted VM's %s: %w: boot it cold", what, err)
	}
	if f.Size != rec.Size || f.ModTime != rec.ModTime {
		return fmt.Errorf("the %s %s is not the one the snapshotted VM booted (%s: %d bytes, modified %s; now %d bytes, modified %s): boot it cold, or take a new snapshot",
			what, path, rec.Path, rec.Size, time.Unix(0, rec.ModTime).UTC().Format(time.RFC3339), f.Size, time.Unix(0, f.ModTime).UTC().Format(time.RFC3339))
	}
	return nil
}

// restoreLayout is the machine Restore starts: the snapshot's, with spec's
// name, directory, disks, TAPs, MACs and console. The guest keeps what it
// has in memory: its kernel command line and its MACs (the device's MAC
// comes back from the migration stream; the agent changes it). The NICs'
// configured MACs are spec's, not the snapshot's: QEMU announces the
// configured MAC (RARP) for a while after an incoming migration, and the
// snapshot's is another VM's (a fork's source runs on with it) whose
// traffic the host's bridge would then send to this VM.
func (m snapshotMeta) restoreLayout(b *Backend, spec hypervisor.Spec, dir string) layout {
	l := b.layoutOf(spec)
	l.Cmdline = m.Cmdline
	if spec.Kernel == "" {
		l.Kernel = m.Kernel.Path
	}
	if m.Initrd != nil && spec.Initrd == "" {
		l.Initrd = m.Initrd.Path
	}
	if m.Agent == agentVsock {
		l.CID = m.AgentCID
	}
	l.MemFile, l.MemShared = "", false
	if m.Memory == MemoryShared {
		l.MemFile = filepath.Join(dir, SnapshotMemoryName)
	}
	l.Incoming = true
	return l
}

// Restore implements hypervisor.Restorer. Before anything starts it checks
// that the snapshot fits spec and this host (qemu version, accelerator,
// cpu, machine, memory, vCPUs, kernel, disks, NICs, agent channel). It
// then starts QEMU paused with the snapshot's machine and spec's files
// (-S -incoming defer), loads the state ("exec:cat FILE"), waits for the
// load to complete and continues the guest. On failure nothing is left:
// no process, sockets or pid file.
func (b *Backend) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (_ hypervisor.Instance, err error) {
	t0 := time.Now()
	step := func(name string, fn func() error) error {
		if err := fn(); err != nil {
			return fmt.Errorf("qemu: restoring vm %s from %s: %s: %w", spec.ID, dir, name, err)
		}
		return nil
	}
	var undo []func()
	defer func() {
		if err != nil {
			for k := len(undo) - 1; k >= 0; k-- {
				undo[k]()
			}
		}
	}()
	var meta snapshotMeta
	var l layout
	for _, s := range []struct {
		name string
		fn   func() error
	}{
		{"checking the spec", func() error { return validate(spec) }},
		{"reading the snapshot", func() (err error) { meta, err = readSnapshot(dir); return err }},
		{"matching the snapshot to the spec", func() error { return meta.fits(spec, b.layoutOf(spec)) }},
		{"checking the qemu version", func() error {
			v, err := b.Version(ctx)
			if err != nil {
				return err
			}
			if v != meta.QEMUVersion {
				return fmt.Errorf("the snapshot was taken by qemu %s and this is %s: boot it cold, or take a new snapshot", meta.QEMUVersion, v)
			}
			return nil
		}},
		{"checking the TAP devices", func() error {
			// As in Start: QEMU running as root would create a missing TAP
			// itself, off the bridge.
			for _, nic := range spec.NICs {
				if _, err := net.InterfaceByName(nic.TAP); err != nil && len(b.Wrap) == 0 {
					return fmt.Errorf("its TAP device %s is missing: %w", nic.TAP, err)
				}
			}
			return nil
		}},
		{"checking that no qemu runs for the vm", func() error {
			if inst, err := b.find(spec); err == nil {
				inst.p.Close()
				return fmt.Errorf("qemu already runs for it as pid %d (stop it first)", inst.pid)
			}
			return nil
		}},
	} {
		if err := step(s.name, s.fn); err != nil {
			return nil, err
		}
	}
	l = meta.restoreLayout(b, spec, dir)
	marker := filepath.Join(spec.Dir, RestoringFile)
	if err := step("marking the restore", func() error {
		for _, name := range []string{PIDFile, QMPSocket, AgentSocket} {
			if err := os.Remove(filepath.Join(spec.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("removing stale %s: %w", name, err)
			}
		}
		undo = append(undo, func() {
			for _, name := range []string{PIDFile, QMPSocket, AgentSocket, RestoringFile} {
				os.Remove(filepath.Join(spec.Dir, name))
			}
		})
		for _, p := range []string{l.Console, filepath.Join(spec.Dir, LogFile), filepath.Join(spec.Dir, PIDFile)} {
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			f.Close()
		}
		return atomicfile.Write(marker, []byte(dir+"\n"), 0o600)
	}); err != nil {
		return nil, err
	}
	logPath := filepath.Join(spec.Dir, LogFile)
	var logOffset int64
	if fi, err := os.Stat(logPath); err == nil {
		logOffset = fi.Size()
	}
	withLog := func(err error) error {
		if msg := logErrors(tail(logPath, logOffset)); msg != "" {
			return fmt.Errorf("%w; the qemu log says: %s", err, msg)
		}
		return err
	}
	var inst *instance
	if err := step("starting qemu", func() error {
		argv := append(slices.Clone(b.Wrap), l.argv(b.binary())...)
		b.log().Debug("starting qemu for a restore", "vm", spec.ID, "argv", argv)
		undo = append(undo, func() { b.killStray(spec) })
		if _, err := runner.Default.Run(ctx, argv[0], argv[1:]...); err != nil {
			return withLog(err)
		}
		var st qmpStatus
		var err error
		inst, st, err = b.adopt(ctx, spec)
		if err != nil {
			return withLog(err)
		}
		undo = append(undo, func() { inst.requested.Store(true); inst.p.Kill(0, 10*time.Second) })
		if st.Status != "inmigrate" {
			return fmt.Errorf("qemu is %q, not waiting for the snapshot", st.Status)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	lctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		lctx, cancel = context.WithTimeout(ctx, migrationTimeout)
		defer cancel()
	}
	err = inst.qmp(lctx, func(c *qmpClient) error {
		if err := step("loading the snapshot", func() error {
			if err := setIgnoreShared(lctx, c, meta.Memory == MemoryShared); err != nil {
				return err
			}
			f, err := os.Open(filepath.Join(dir, SnapshotStateName))
			if err != nil {
				return err
			}
			err = c.SendFD(lctx, migrationFD, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("passing %s to qemu: %w", SnapshotStateName, err)
			}
			if err := c.Execute(lctx, "migrate-incoming", map[string]string{"uri": "fd:" + migrationFD}, nil); err != nil {
				return err
			}
			if err := waitMigration(lctx, c); err != nil {
				return withLog(err)
			}
			var st qmpStatus
			if err := c.Execute(lctx, "query-status", nil, &st); err != nil {
				return err
			}
			if st.Status != "paused" {
				return withLog(fmt.Errorf("qemu is %q after the load, not paused", st.Status))
			}
			return nil
		}); err != nil {
			return err
		}
		if err := os.Remove(marker); err != nil {
			return step("unmarking the restore", func() error { return err })
		}
		return step("resuming the VM", func() error {
			if err := c.Execute(lctx, "cont", nil, nil); err != nil {
				return err
			}
			var st qmpStatus
			if err := c.Execute(lctx, "query-status", nil, &st); err != nil {
				return err
			}
			if !st.Running {
				return withLog(fmt.Errorf("qemu is %q after cont, not running", st.Status))
			}
			return nil
		})
	})
	if err != nil {
		if inst.Exited() {
			err = fmt.Errorf("%w (qemu exited: %s)", err, inst.Exit())
		}
		return nil, err
	}
	b.log().Info("qemu restored", "vm", spec.ID, "pid", inst.pid, "snapshot", dir, "memory", meta.Memory, "elapsed", time.Since(t0))
	return inst, nil
}

// versionRE is the first line of qemu-system-x86_64 --version.
var versionRE = regexp.MustCompile(`^QEMU emulator version ([0-9]+\.[0-9]+\.[0-9]+)(?: \(([ -~]{1,120})\))?$`)

// Version implements hypervisor.Restorer with the version QEMU prints,
// in the form Snapshot records from QMP ("7.2.22 (Debian 1:7.2+dfsg-7)").
// The answer is kept while the binary's size and modification time stay.
func (b *Backend) Version(ctx context.Context) (string, error) {
	bin, err := lookPath(b.binary())
	if err != nil {
		return "", fmt.Errorf("qemu: reading the version: %w", err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return "", fmt.Errorf("qemu: reading the version: %w", err)
	}
	key := fmt.Sprintf("%s %d %d", bin, fi.Size(), fi.ModTime().UnixNano())
	b.verMu.Lock()
	defer b.verMu.Unlock()
	if b.verKey == key {
		return b.ver, nil
	}
	out, err := runner.Default.Run(ctx, bin, "--version")
	if err != nil {
		return "", fmt.Errorf("qemu: reading the version: %w", err)
	}
	v, err := parseVersion(string(out))
	if err != nil {
		return "", fmt.Errorf("qemu: reading the version: %s --version: %w", bin, err)
	}
	b.ver, b.verKey = v, key
	return v, nil
}

// parseVersion reads qemu --version's first line.
func parseVersion(out string) (string, error) {
	first, _, _ := strings.Cut(out, "\n")
	mm := versionRE.FindStringSubmatch(strings.TrimSpace(first))
	if mm == nil {
		return "", fmt.Errorf("printed %q, not \"QEMU emulator version X.Y.Z (...)\"", clip(first, 80))
	}
	if mm[2] == "" {
		return mm[1], nil
	}
	return mm[1] + " (" + mm[2] + ")", nil
}

// logErrors drops QEMU's warnings from a log tail (TCG lists the CPU
// features it lacks at every start), keeping what says why it failed.
func logErrors(s string) string {
	var kept []string
	for _, line := range strings.Split(s, "\n") {
		if !strings.Contains(line, ": warning: ") {
			kept = append(kept, strings.TrimSpace(line))
		}
	}
	return strings.Join(kept, "; ")
}
