package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/runner"
)

// Files that Snapshot writes into a snapshot directory.
const (
	// SnapshotStateName is Firecracker's microVM state file (devices, vCPUs).
	SnapshotStateName = "vmstate.snap"
	// SnapshotMemoryName is the guest memory, as large as the guest's RAM.
	// A restored VM maps it privately and reads it for as long as it runs.
	SnapshotMemoryName = "memory.snap"
	// SnapshotMetaName is banger's record of what Restore needs.
	SnapshotMetaName = "firecracker-snapshot.json"
)

// snapshotFormat is the version of the SnapshotMetaName format.
const snapshotFormat = 1

// maxMetaSize bounds what Restore reads of a metadata file.
const maxMetaSize = 1 << 20

var (
	_ hypervisor.Pauser      = (*instance)(nil)
	_ hypervisor.Snapshotter = (*instance)(nil)
	_ hypervisor.Restorer    = Backend{}
)

// snapshotMeta is the content of SnapshotMetaName: the snapshotted
// machine as Firecracker reported it (GET /vm/config, GET /version).
type snapshotMeta struct {
	Format             int             `json:"format"`
	FirecrackerVersion string          `json:"firecracker_version"`
	VCPUs              int             `json:"vcpu_count"`
	MemoryMiB          int             `json:"mem_size_mib"`
	Drives             []snapshotDrive `json:"drives"`
	NICs               []snapshotNIC   `json:"network_interfaces"`
	Vsock              snapshotVsock   `json:"vsock"`
}

// snapshotDrive is a drive of the snapshotted VM. Path is where
// Firecracker reopens it at load, before Restore points it elsewhere.
type snapshotDrive struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	Root     bool   `json:"root"`
	ReadOnly bool   `json:"read_only"`
}

// snapshotNIC is a network interface of the snapshotted VM. The MAC is the
// guest's, which a load cannot change.
type snapshotNIC struct {
	ID  string `json:"id"`
	TAP string `json:"tap"`
	MAC string `json:"mac,omitempty"`
}

// snapshotVsock is the snapshotted VM's vsock device. A load cannot change
// the guest CID; with hybrid vsock the host never uses it.
type snapshotVsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Pause implements hypervisor.Pauser: it stops the guest's vCPUs.
func (i *instance) Pause(ctx context.Context) error {
	return i.patchVM(ctx, "pausing", Paused)
}

// Resume implements hypervisor.Pauser: it continues the guest's vCPUs.
func (i *instance) Resume(ctx context.Context) error {
	return i.patchVM(ctx, "resuming", Resumed)
}

func (i *instance) patchVM(ctx context.Context, verb string, s VMState) error {
	if i.Exited() {
		return fmt.Errorf("firecracker: %s %s: %w", verb, i.id, hypervisor.ErrNotRunning)
	}
	if err := i.client.PatchVM(ctx, s); err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", verb, i.id, err)
	}
	return nil
}

// Snapshot implements hypervisor.Snapshotter. It writes a full snapshot
// (SnapshotStateName, SnapshotMemoryName) and SnapshotMetaName into dir.
// The VM must be paused; it stays paused. On failure dir is left empty.
func (i *instance) Snapshot(ctx context.Context, dir string) (err error) {
	t0 := time.Now()
	fail := func(step string, err error) error {
		return fmt.Errorf("firecracker: snapshotting %s into %s: %s: %w", i.id, dir, step, err)
	}
	if i.Exited() {
		return fail("checking the VM", hypervisor.ErrNotRunning)
	}
	if err := emptyDir(dir); err != nil {
		return fail("checking the directory", err)
	}
	version, err := i.client.Version(ctx)
	if err != nil {
		return fail("reading the firecracker version", err)
	}
	cfg, err := i.client.VMConfig(ctx)
	if err != nil {
		return fail("reading the VM configuration", err)
	}
	meta, err := metaOf(version, cfg)
	if err != nil {
		return fail("recording the VM configuration", err)
	}
	state, mem, metaPath := filepath.Join(dir, SnapshotStateName), filepath.Join(dir, SnapshotMemoryName), filepath.Join(dir, SnapshotMetaName)
	defer func() {
		if err != nil {
			// dir was empty: these are ours.
			os.Remove(state)
			os.Remove(mem)
			os.Remove(metaPath)
		}
	}()
	if err := i.client.CreateSnapshot(ctx, SnapshotCreate{SnapshotPath: state, MemFilePath: mem, SnapshotType: "Full"}); err != nil {
		return fail("creating the snapshot", err)
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return fail("encoding "+SnapshotMetaName, err)
	}
	if err := atomicfile.Write(metaPath, append(data, '\n'), 0o600); err != nil {
		return fail("writing "+SnapshotMetaName, err)
	}
	i.log.Info("firecracker snapshot written", "id", i.id, "dir", dir, "elapsed", time.Since(t0))
	return nil
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

// metaOf records the machine Firecracker reports.
func metaOf(version string, cfg VMConfig) (snapshotMeta, error) {
	m := snapshotMeta{
		Format:             snapshotFormat,
		FirecrackerVersion: version,
		VCPUs:              cfg.MachineConfig.VCPUCount,
		MemoryMiB:          cfg.MachineConfig.MemSizeMiB,
	}
	for _, d := range cfg.Drives {
		m.Drives = append(m.Drives, snapshotDrive{ID: d.DriveID, Path: d.PathOnHost, Root: d.IsRootDevice, ReadOnly: d.IsReadOnly})
	}
	for _, n := range cfg.NetworkInterfaces {
		m.NICs = append(m.NICs, snapshotNIC{ID: n.IfaceID, TAP: n.HostDevName, MAC: n.GuestMAC})
	}
	if cfg.Vsock == nil {
		return m, errors.New("the VM has no vsock device, so a restored guest's agent would be unreachable")
	}
	m.Vsock = snapshotVsock{GuestCID: cfg.Vsock.GuestCID, UDSPath: cfg.Vsock.UDSPath}
	if err := m.check(); err != nil {
		return m, fmt.Errorf("firecracker reported an unusable configuration: %w", err)
	}
	return m, nil
}

// check validates a record, whether just made or read back.
func (m snapshotMeta) check() error {
	if m.Format != snapshotFormat {
		return fmt.Errorf("format %d, want %d", m.Format, snapshotFormat)
	}
	if m.FirecrackerVersion == "" {
		return errors.New("no firecracker version")
	}
	if m.VCPUs < 1 || m.VCPUs > 32 || m.MemoryMiB < 1 {
		return fmt.Errorf("%d vCPUs and %d MiB", m.VCPUs, m.MemoryMiB)
	}
	seen := map[string]bool{}
	for _, d := range m.Drives {
		if d.ID == "" || !filepath.IsAbs(d.Path) {
			return fmt.Errorf("drive %q has no absolute path (%q)", d.ID, d.Path)
		}
		if seen[d.ID] {
			return fmt.Errorf("drive %s appears twice", d.ID)
		}
		seen[d.ID] = true
	}
	seen = map[string]bool{}
	for _, n := range m.NICs {
		if n.ID == "" || n.TAP == "" {
			return fmt.Errorf("network interface %q has no tap", n.ID)
		}
		if seen[n.ID] {
			return fmt.Errorf("network interface %s appears twice", n.ID)
		}
		seen[n.ID] = true
	}
	if m.Vsock.GuestCID < 3 || m.Vsock.UDSPath == "" {
		return fmt.Errorf("vsock cid %d, path %q", m.Vsock.GuestCID, m.Vsock.UDSPath)
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
		return m, fmt.Errorf("%s holds no firecracker snapshot (no %s): take the snapshot with firecracker, or boot cold", dir, SnapshotMetaName)
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
	for _, name := range []string{SnapshotStateName, SnapshotMemoryName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return m, fmt.Errorf("the snapshot in %s is incomplete: %w (take a new snapshot)", dir, err)
		}
		if !fi.Mode().IsRegular() {
			return m, fmt.Errorf("the snapshot in %s is incomplete: %s is not a file (take a new snapshot)", dir, name)
		}
	}
	return m, nil
}

// fits checks that spec describes the snapshotted machine: Firecracker
// restores the machine and its devices as they were and can only rebind
// the drives' files, the NICs' TAPs and the vsock socket.
func (m snapshotMeta) fits(spec hypervisor.Spec) error {
	if spec.VCPUs != m.VCPUs || spec.MemoryMiB != m.MemoryMiB {
		return fmt.Errorf("the snapshot is of a VM with %d vCPUs and %d MiB, the spec asks for %d vCPUs and %d MiB: boot it cold, or take a new snapshot",
			m.VCPUs, m.MemoryMiB, spec.VCPUs, spec.MemoryMiB)
	}
	drives := map[string]snapshotDrive{}
	var ids []string
	for _, d := range m.Drives {
		drives[d.ID] = d
		ids = append(ids, d.ID)
	}
	for _, d := range spec.Disks {
		sd, ok := drives[d.ID]
		if !ok {
			return fmt.Errorf("the snapshot has no drive %q (it has %s): boot it cold", d.ID, list(ids))
		}
		if sd.Root != d.Root || sd.ReadOnly != d.ReadOnly {
			return fmt.Errorf("drive %s was snapshotted with root=%v read-only=%v, the spec asks root=%v read-only=%v: boot it cold",
				d.ID, sd.Root, sd.ReadOnly, d.Root, d.ReadOnly)
		}
	}
	if len(spec.Disks) != len(m.Drives) {
		return fmt.Errorf("the snapshot has drives %s and the spec %d disks: give the restore a disk for each drive", list(ids), len(spec.Disks))
	}
	nics := map[string]bool{}
	ids = nil
	for _, n := range m.NICs {
		nics[n.ID] = true
		ids = append(ids, n.ID)
	}
	for _, n := range spec.NICs {
		if !nics[n.ID] {
			return fmt.Errorf("the snapshot has no network interface %q (it has %s): boot it cold", n.ID, list(ids))
		}
	}
	if len(spec.NICs) != len(m.NICs) {
		return fmt.Errorf("the snapshot has network interfaces %s and the spec %d NICs: give the restore a TAP for each", list(ids), len(spec.NICs))
	}
	return nil
}

// disksPresent checks that the drives' recorded files exist: Firecracker
// reopens them at load, before Restore points the drives at spec's disks.
func (m snapshotMeta) disksPresent() error {
	for _, d := range m.Drives {
		fi, err := os.Stat(d.Path)
		if err == nil && (fi.Mode().IsRegular() || fi.Mode()&os.ModeDevice != 0) {
			continue
		}
		why := "is not a file or block device"
		if err != nil {
			why = "is gone: " + err.Error()
		}
		return fmt.Errorf("drive %s's file %s, which the snapshot was taken with, %s; firecracker reopens it at load, so keep the snapshotted VM's disks beside the snapshot, or boot cold", d.ID, d.Path, why)
	}
	return nil
}

func list(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, ", ")
}

// Restore implements hypervisor.Restorer. It spawns firecracker as Start
// does, loads the snapshot in dir with each NIC on spec's TAP and the vsock
// on spec.Dir's socket, points each drive at spec's disk, and resumes the
// guest. The restored guest keeps the snapshot's MACs and vsock CID; its
// agent must give it its new identity.
func (b Backend) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (_ hypervisor.Instance, err error) {
	t0 := time.Now()
	if err := validate(spec); err != nil {
		return nil, fmt.Errorf("firecracker: checking the spec of %s: %w", spec.ID, err)
	}
	l := newLaunch(spec)
	defer func() {
		if err != nil {
			l.rollback()
		}
	}()
	var meta snapshotMeta
	if err := l.step("reading the snapshot", func() error {
		var err error
		meta, err = readSnapshot(dir)
		return err
	}); err != nil {
		return nil, err
	}
	if err := l.step("matching the snapshot to the spec", func() error { return meta.fits(spec) }); err != nil {
		return nil, err
	}
	if err := l.step("checking the snapshotted disks", meta.disksPresent); err != nil {
		return nil, err
	}
	if err := b.spawn(ctx, l); err != nil {
		return nil, err
	}
	recorded := map[string]string{}
	for _, d := range meta.Drives {
		recorded[d.ID] = d.Path
	}
	c := l.inst.client
	err = l.configure([]apiStep{
		l.loggerStep(ctx),
		{"checking the firecracker version", func() error {
			v, err := c.Version(ctx)
			if err != nil {
				return err
			}
			if v != meta.FirecrackerVersion {
				return fmt.Errorf("the snapshot was taken by firecracker %s and this is %s: boot it cold, or take a new snapshot", meta.FirecrackerVersion, v)
			}
			return nil
		}},
		{"loading the snapshot", func() error {
			load := SnapshotLoad{
				SnapshotPath:  filepath.Join(dir, SnapshotStateName),
				MemBackend:    MemBackend{BackendType: "File", BackendPath: filepath.Join(dir, SnapshotMemoryName)},
				VsockOverride: &VsockOverride{UDSPath: l.p.vsock},
				// Paused, so that no guest I/O reaches the recorded disks.
				ResumeVM: false,
			}
			for _, n := range spec.NICs {
				load.NetworkOverrides = append(load.NetworkOverrides, NetworkOverride{IfaceID: n.ID, HostDevName: n.TAP})
			}
			return c.LoadSnapshot(ctx, load)
		}},
		{"pointing the drives at the VM's disks", func() error {
			for _, d := range spec.Disks {
				if recorded[d.ID] == d.Path {
					continue
				}
				if err := c.PatchDrive(ctx, PartialDrive{DriveID: d.ID, PathOnHost: d.Path}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"resuming the VM", func() error {
			return c.PatchVM(ctx, Resumed)
		}},
	})
	if err != nil {
		return nil, err
	}
	l.inst.log.Info("firecracker restored", "id", spec.ID, "pid", l.inst.pid, "snapshot", dir, "elapsed", time.Since(t0))
	return l.inst, nil
}

// versionRE is the first line of firecracker --version.
var versionRE = regexp.MustCompile(`^Firecracker v([0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+-]{0,40})$`)

// Version implements hypervisor.Restorer with the version firecracker
// --version prints, as GET /version reports it ("1.16.1").
func (b Backend) Version(ctx context.Context) (string, error) {
	bin, err := b.binary()
	if err != nil {
		return "", fmt.Errorf("firecracker: reading the version: %w", err)
	}
	out, err := runner.Default.Run(ctx, bin, "--version")
	if err != nil {
		return "", fmt.Errorf("firecracker: reading the version: %w", err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	mm := versionRE.FindStringSubmatch(strings.TrimSpace(first))
	if mm == nil {
		return "", fmt.Errorf("firecracker: reading the version: %s --version printed %q, not \"Firecracker v<version>\"", bin, clip(first, 80))
	}
	return mm[1], nil
}

// clip shortens s to n bytes for an error message.
func clip(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// unpatchedDrive returns the id of a drive of cfg whose file is not the one
// spec gives it (a restore stopped before it pointed the drives at the VM's
// disks), or "".
func unpatchedDrive(cfg VMConfig, spec hypervisor.Spec) string {
	for _, d := range spec.Disks {
		i := slices.IndexFunc(cfg.Drives, func(fd Drive) bool { return fd.DriveID == d.ID })
		if i >= 0 && cfg.Drives[i].PathOnHost != d.Path {
			return d.ID
		}
	}
	return ""
}
