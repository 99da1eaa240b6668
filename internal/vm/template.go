package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/console"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/network"
)

// A template is an image's VM snapshotted once it was ready, with the
// disks it had then: a warm create restores it instead of booting, onto
// overlays (or copies) of those disks, and the guest agent then gives the
// guest its own identity. Templates live under DataDir/templates/IMAGE/ID:
//
//	template.json   the record below
//	root.qcow2, work.qcow2 (or rootfs.ext4, work.ext4 for raw backends)
//	snapshot/       the hypervisor's snapshot
//
// A template records what it depends on; one that no longer fits a create
// is never restored: the VM boots cold, and says why.

// templateFormat is the version of template.json.
const templateFormat = 1

// templateMeta is the file name of a template's record.
const templateMeta = "template.json"

// templateSnapshot is the directory of a template's hypervisor snapshot.
const templateSnapshot = "snapshot"

// maxTemplateMeta bounds what is read of a template record.
const maxTemplateMeta = 1 << 16

// The template VM's own network: link-local, so that the guests restored
// from it, which run with this address until the agent gives them theirs,
// never answer for an address of the bridge's subnet.
var (
	templateIP      = netip.MustParseAddr("169.254.169.2")
	templateGateway = netip.MustParseAddr("169.254.169.1")
)

const templateHostname = "banger-template"

// fileID identifies a file a template depends on.
type fileID struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

func identify(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	return fileID{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}, nil
}

// template is a template's record (template.json).
type template struct {
	dir string

	Format            int    `json:"format"`
	ID                string `json:"id"`
	Image             string `json:"image"`
	Hypervisor        string `json:"hypervisor"`
	HypervisorVersion string `json:"hypervisor_version"`
	VCPUs             int    `json:"vcpus"`
	MemoryMiB         int    `json:"memory_mib"`
	DiskFormat        string `json:"disk_format"`
	RootSize          int64  `json:"root_size"`
	WorkSize          int64  `json:"work_size"`
	// Rootfs and WorkSeed are the image's files the template's disks were
	// made from; Kernel and Initrd the bundle's it booted.
	Rootfs   fileID    `json:"rootfs"`
	WorkSeed fileID    `json:"work_seed"`
	Kernel   fileID    `json:"kernel"`
	Initrd   fileID    `json:"initrd"`
	Created  time.Time `json:"created"`
	// BootMS is how long the template VM took to be ready; SnapshotMS its
	// snapshot.
	BootMS     int64 `json:"boot_ms"`
	SnapshotMS int64 `json:"snapshot_ms"`
	// HostKeys are the template guest's SSH host keys, as its agent
	// reported them: a restore's new identity must replace every one, and
	// knowing them spares the restore a health request before it.
	HostKeys []string `json:"host_keys,omitempty"`
}

// disk is the path of the template's root or work disk.
func (t *template) disk(which string) string {
	return filepath.Join(t.dir, diskName(which, t.DiskFormat))
}

func (t *template) snapshot() string { return filepath.Join(t.dir, templateSnapshot) }

func (e *Engine) templatesDir(image string) string {
	return filepath.Join(e.cfg.DataDir, "templates", image)
}

// readTemplate reads the template in dir strictly; a partial or damaged
// one is an error.
func readTemplate(dir string) (*template, error) {
	f, err := os.Open(filepath.Join(dir, templateMeta))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTemplateMeta+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxTemplateMeta {
		return nil, fmt.Errorf("template %s: its record is larger than %d bytes", dir, maxTemplateMeta)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var t template
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("template %s: decoding its record: %w", dir, err)
	}
	if t.Format != templateFormat {
		return nil, fmt.Errorf("template %s: record format %d, this banger reads %d", dir, t.Format, templateFormat)
	}
	if !hypervisor.DiskFormat(t.DiskFormat).Valid() || t.DiskFormat == "" {
		return nil, fmt.Errorf("template %s: disk format %q", dir, t.DiskFormat)
	}
	t.dir = dir
	for _, p := range []string{t.disk("root"), t.disk("work"), t.snapshot()} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("template %s is incomplete: %w", dir, err)
		}
	}
	return &t, nil
}

// templates lists image's complete templates, newest first.
func (e *Engine) templates(image string) []*template {
	var out []*template
	for _, dir := range subdirs(e.templatesDir(image), func(n string) bool { return !strings.HasPrefix(n, ".") }) {
		t, err := readTemplate(dir)
		if err != nil {
			e.log.Debug("skipping a template", "dir", dir, "err", err)
			continue
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *template) int { return b.Created.Compare(a.Created) })
	return out
}

// latestTemplate is image's newest complete template, or nil.
func (e *Engine) latestTemplate(image string) *template {
	if ts := e.templates(image); len(ts) > 0 {
		return ts[0]
	}
	return nil
}

// warmFit reports why t cannot be restored for p, or "" when it can: a
// snapshot restores only onto the machine it was taken of, with the same
// disks under it.
func (e *Engine) warmFit(ctx context.Context, t *template, p *Plan) string {
	img := p.Image.Name
	switch {
	case t.Hypervisor != p.backend.Name():
		return fmt.Sprintf("the snapshot of image %s was taken with %s, this VM runs on %s", img, t.Hypervisor, p.backend.Name())
	case t.DiskFormat != p.diskFormat:
		return fmt.Sprintf("the snapshot of image %s has %s disks, this VM gets %s ones", img, t.DiskFormat, p.diskFormat)
	case t.VCPUs != p.Options.VCPUs || t.MemoryMiB != p.Options.MemoryMiB:
		return fmt.Sprintf("the snapshot of image %s is of a VM with %d vCPUs and %d MiB, this VM has %d vCPUs and %d MiB",
			img, t.VCPUs, t.MemoryMiB, p.Options.VCPUs, p.Options.MemoryMiB)
	case t.RootSize != p.diskSize:
		return fmt.Sprintf("the snapshot of image %s has a %d-byte root disk, this VM asks for %d bytes", img, t.RootSize, p.diskSize)
	case t.WorkSize != p.workSize:
		return fmt.Sprintf("the snapshot of image %s has a %d-byte /root disk, this VM asks for %d bytes", img, t.WorkSize, p.workSize)
	}
	r, ok := p.backend.(hypervisor.Restorer)
	if !ok {
		return fmt.Sprintf("the %s backend cannot restore snapshots", p.backend.Name())
	}
	if v, err := r.Version(ctx); err != nil || v != t.HypervisorVersion {
		return fmt.Sprintf("the snapshot of image %s was taken by %s %s, this is %s (%v)", img, t.Hypervisor, t.HypervisorVersion, v, err)
	}
	b := p.Bundle
	kernel, initrd := imageBootFiles(p.Image, b)
	whose := "the bundle's"
	if p.Image.Kernel != "" {
		whose = "image " + img + "'s"
	}
	for _, f := range []struct {
		what string
		rec  fileID
		path string
	}{
		{"image " + img + "'s rootfs", t.Rootfs, p.Image.Rootfs},
		{whose + " kernel", t.Kernel, kernel},
		{whose + " initrd", t.Initrd, initrd},
	} {
		if now, err := identify(f.path); err != nil || now != f.rec {
			return fmt.Sprintf("%s changed since the snapshot was taken (%s)", f.what, changed(f.rec, now, err))
		}
	}
	if seed, err := e.cfg.Images.seedPath(b, p.Image); err != nil || seed == "" {
		return fmt.Sprintf("image %s's work-seed: %v", img, err)
	} else if now, err := identify(seed); err != nil || now != t.WorkSeed {
		return fmt.Sprintf("image %s's work-seed changed since the snapshot was taken (%s)", img, changed(t.WorkSeed, now, err))
	}
	for _, which := range []string{"root", "work"} {
		if t.DiskFormat != string(hypervisor.DiskQcow2) {
			continue
		}
		if base, err := disk.Backing(t.disk(which)); err != nil {
			return fmt.Sprintf("the snapshot's %s disk: %v", which, err)
		} else if base != "" {
			e.disks.mu.Lock()
			err := e.disks.checkBase(base)
			e.disks.mu.Unlock()
			if err != nil {
				return err.Error()
			}
		}
	}
	return ""
}

// changed says how a file differs from its record.
func changed(rec, now fileID, err error) string {
	if err != nil {
		return err.Error()
	}
	if rec.Path != now.Path {
		return "it is now " + now.Path + ", was " + rec.Path
	}
	return fmt.Sprintf("%d bytes modified %s, was %d bytes modified %s", now.Size, time.Unix(0, now.ModTime).UTC().Format(time.RFC3339),
		rec.Size, time.Unix(0, rec.ModTime).UTC().Format(time.RFC3339))
}

// WarmState says whether an image's VMs are created warm.
type WarmState struct {
	// State is "ready" (creates with the default sizes restore its
	// snapshot), "building", "stale" (Reason says why it no longer fits) or
	// "none".
	State   string
	Reason  string
	Created time.Time
}

// Warm states.
const (
	WarmReady    = "ready"
	WarmBuilding = "building"
	WarmStale    = "stale"
	WarmNone     = "none"
)

// WarmStatus says whether creates of img with the default sizes are warm.
func (e *Engine) WarmStatus(ctx context.Context, b *bundle.Bundle, img *Image) WarmState {
	if e.warmBuilding(img.Name) {
		return WarmState{State: WarmBuilding}
	}
	t := e.latestTemplate(img.Name)
	if t == nil {
		return WarmState{State: WarmNone}
	}
	p, err := e.templatePlan(ctx, b, img)
	if err != nil {
		return WarmState{State: WarmStale, Reason: err.Error(), Created: t.Created}
	}
	if why := e.warmFit(ctx, t, p); why != "" {
		return WarmState{State: WarmStale, Reason: why, Created: t.Created}
	}
	return WarmState{State: WarmReady, Created: t.Created}
}

func (e *Engine) warmBuilding(image string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.building[image]
}

// templatePlan is the plan of image's template VM: the default sizes, as a
// create that names none.
func (e *Engine) templatePlan(ctx context.Context, b *bundle.Bundle, img *Image) (*Plan, error) {
	be, err := e.Backend(b)
	if err != nil {
		return nil, unavailable(err)
	}
	if _, ok := be.(hypervisor.Restorer); !ok {
		return nil, unavailable(fmt.Errorf("the %s backend cannot restore snapshots: VMs of image %s boot cold", be.Name(), img.Name))
	}
	p := &Plan{Options: CreateOptions{Image: img.Name, VCPUs: e.cfg.VCPUs, MemoryMiB: e.cfg.MemoryMiB}, Bundle: b, Image: img, backend: be,
		diskFormat: diskFormatFor(be)}
	if p.diskSize, err = disk.Size(img.Rootfs); err != nil {
		return nil, unavailable(fmt.Errorf("image %s: %w", img.Name, err))
	}
	if p.workSize, err = e.planWorkSize(img, 0); err != nil {
		return nil, unavailable(err)
	}
	return p, nil
}

// Warm makes sure creates of image name with the default sizes are warm:
// when its newest template does not fit, it boots the image's VM, waits
// until it is ready and has settled, and snapshots it. It waits for a
// build of the image that runs already.
func (e *Engine) Warm(ctx context.Context, name string, pr Progress) (WarmState, error) {
	b, err := e.Bundle()
	if err != nil {
		return WarmState{}, err
	}
	img, err := e.cfg.Images.Resolve(ctx, b, name)
	if err != nil {
		return WarmState{}, err
	}
	p, err := e.templatePlan(ctx, b, img)
	if err != nil {
		return WarmState{}, err
	}
	ops := []string{doctor.OpCreate}
	if p.backend.Name() == "qemu" {
		ops = append(ops, doctor.OpQEMU)
	}
	if err := e.cfg.Requirements(ctx, ops...); err != nil {
		return WarmState{}, unavailable(err)
	}
	unlock := e.tlocks.lock(img.Name)
	defer unlock()
	st := newStages(pr)
	if t := e.latestTemplate(img.Name); t != nil {
		why := e.warmFit(ctx, t, p)
		if why == "" {
			st.pr.Log(fmt.Sprintf("image %s is warm already (snapshot of %s)", img.Name, t.Created.Local().Format(time.DateTime)))
			return WarmState{State: WarmReady, Created: t.Created}, nil
		}
		st.pr.Log("rebuilding the snapshot: " + why)
	}
	t, err := e.buildTemplate(ctx, p, st)
	if err != nil {
		return WarmState{}, err
	}
	return WarmState{State: WarmReady, Created: t.Created}, nil
}

// warmLater builds image's template in the background, after a cold
// create of it, unless one is being built or the last build failed not
// long ago.
func (e *Engine) warmLater(p *Plan) {
	name := p.Image.Name
	e.mu.Lock()
	if e.building[name] || time.Since(e.warmFailed[name]) < warmRetry {
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	e.Go(func() {
		unlock, ok := e.tlocks.tryLock(name)
		if !ok {
			return
		}
		defer unlock()
		tp, err := e.templatePlan(e.ctx, p.Bundle, p.Image)
		if err != nil {
			return
		}
		if t := e.latestTemplate(name); t != nil && e.warmFit(e.ctx, t, tp) == "" {
			return
		}
		e.log.Info("building the snapshot of an image in the background, for warm creates", "image", name)
		if _, err := e.buildTemplate(e.ctx, tp, newStages(nil)); err != nil && e.ctx.Err() == nil {
			e.log.Warn("building the snapshot of an image failed; its VMs boot cold", "image", name, "err", err)
		}
	})
}

// warmRetry is how long after a failed template build of an image no
// other starts in the background.
const warmRetry = 10 * time.Minute

// buildTemplate boots p's VM as a template, snapshots it once it has
// settled, and records it; the caller holds the image's template lock.
// Nothing of a failed build is left.
func (e *Engine) buildTemplate(ctx context.Context, p *Plan, st *stages) (_ *template, err error) {
	name := p.Image.Name
	if err := ValidateName(name); err != nil {
		return nil, invalid("image name %q cannot be a directory name: %w", truncate(name, 64), err)
	}
	e.mu.Lock()
	e.building[name] = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.building, name)
		if err != nil {
			e.warmFailed[name] = time.Now()
		} else {
			delete(e.warmFailed, name)
		}
		e.mu.Unlock()
	}()
	t0 := time.Now()
	b := p.Bundle
	kernel, initrd := imageBootFiles(p.Image, b)
	id := newID()
	final := filepath.Join(e.templatesDir(name), id)
	build := filepath.Join(e.templatesDir(name), ".build-"+id)
	rt := filepath.Join(e.cfg.RuntimeDir, "templates", id)
	t := &template{dir: build, Format: templateFormat, ID: id, Image: name, Hypervisor: p.backend.Name(),
		VCPUs: p.Options.VCPUs, MemoryMiB: p.Options.MemoryMiB, DiskFormat: p.diskFormat, RootSize: p.diskSize, WorkSize: p.workSize}
	defer func() {
		if err != nil {
			os.RemoveAll(build)
			os.RemoveAll(rt)
			err = fmt.Errorf("snapshotting image %s for warm creates: %w", name, err)
		}
	}()
	if r, ok := p.backend.(hypervisor.Restorer); ok {
		if t.HypervisorVersion, err = r.Version(ctx); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		dst  *fileID
		path string
	}{{&t.Rootfs, p.Image.Rootfs}, {&t.Kernel, kernel}, {&t.Initrd, initrd}} {
		if *f.dst, err = identify(f.path); err != nil {
			return nil, err
		}
	}
	seed, err := e.cfg.Images.SeedFor(ctx, b, p.Image)
	if err != nil {
		return nil, err
	}
	if t.WorkSeed, err = identify(seed); err != nil {
		return nil, err
	}
	for _, d := range []string{build, rt} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := st.run("preparing disks", func() error {
		return e.disks.forImage(ctx, build, p.diskFormat, p.Image, seed, p.diskSize, p.workSize)
	}); err != nil {
		return nil, err
	}
	tap := e.cfg.Names.TAPName("t" + id)
	if err := st.run("network", func() error {
		if err := e.cfg.Network.EnsureBridge(ctx); err != nil {
			return err
		}
		return e.cfg.Network.CreateTAP(ctx, tap, os.Getuid(), os.Getgid())
	}); err != nil {
		return nil, err
	}
	defer func() {
		if derr := e.cfg.Network.DeleteTAP(context.WithoutCancel(ctx), tap); derr != nil {
			e.log.Warn("removing the template VM's TAP device", "tap", tap, "err", derr)
		}
	}()
	g := guestconfig.Config{BaseArgs: b.BootArgs, Root: "/dev/vda", Network: guestconfig.Network{
		Client: templateIP, Gateway: templateGateway, PrefixLen: 30, Hostname: templateHostname, Device: "eth0", Autoconf: "off"}}
	cmdline, err := g.Cmdline()
	if err != nil {
		return nil, err
	}
	spec := hypervisor.Spec{
		ID: "t" + id, Dir: rt, Kernel: kernel, Initrd: initrd, Cmdline: cmdline,
		VCPUs: p.Options.VCPUs, MemoryMiB: p.Options.MemoryMiB, ConsoleLog: filepath.Join(build, "console.log"),
		// The highest CIDs are the templates': leases start at the lowest.
		AgentCID: templateCID(id),
		Disks: []hypervisor.Disk{
			{ID: "root", Path: t.disk("root"), Root: true, Format: hypervisor.DiskFormat(p.diskFormat)},
			{ID: "work", Path: t.disk("work"), Format: hypervisor.DiskFormat(p.diskFormat)},
		},
		NICs: []hypervisor.NIC{{ID: "eth0", TAP: tap, MAC: network.MAC(templateIP)}},
	}
	if mf, ok := p.backend.(hypervisor.MemoryFiler); ok && mf.TakesMemoryFile() {
		// The guest's RAM in a file of the template's: the snapshot keeps it
		// instead of copying it, and restores map it, sharing its pages.
		spec.MemoryFile = filepath.Join(build, "memory.ram")
	}
	var inst hypervisor.Instance
	// A template whose kernel stops in early boot fails (its image's next
	// cold create tries again).
	watch := console.New(spec.ConsoleLog, spec.Cmdline, e.cfg.EarlyStall, time.Now())
	if err := st.run("booting "+p.backend.Name(), func() error {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var err error
		inst, err = p.backend.Start(sctx, spec)
		return err
	}); err != nil {
		return nil, err
	}
	defer func() {
		if kerr := inst.Kill(); kerr != nil {
			e.log.Warn("killing the template VM", "image", name, "err", kerr)
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, e.cfg.ReadyTimeout)
	defer cancel()
	c := &agent.Client{Dial: inst.DialAgent}
	var h *agent.Health
	if err := st.run("waiting for agent", func() error {
		var err error
		h, err = e.waitAgent(rctx, "the template VM of image "+name, spec.ConsoleLog, inst, watch)
		if err != nil {
			return err
		}
		if !h.Answers(agent.OpIdentity) {
			return fmt.Errorf("image %s's guest agent is older than this banger and cannot give a restored guest its own identity: rebuild the image (make runtime-bundle, or banger image build)", name)
		}
		// The filesystems at the disks' sizes, once, for every VM after.
		nh, err := c.Identity(rctx, agent.Identity{GrowFilesystems: p.diskFormat == string(hypervisor.DiskQcow2)})
		if err == nil {
			if _, err = ParseHostKeys(nh.SSHHostKeys); err == nil {
				t.HostKeys = nh.SSHHostKeys
			}
		}
		return err
	}); err != nil {
		return nil, err
	}
	if err := st.run("waiting for the boot to settle", func() error {
		if err := waitSettled(rctx, c, inst); err != nil {
			return err
		}
		if !h.Answers(agent.OpTemplate) {
			return nil
		}
		// What each restore's identity starts again starts now, as far as
		// it can; a guest that cannot is snapshotted as it is, and its
		// restores reload sshd instead.
		if err := c.Template(rctx); err != nil {
			e.log.Warn("readying the template VM's guest for its snapshot", "image", name, "err", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	t.BootMS = time.Since(t0).Milliseconds()
	snap := t.snapshot()
	t1 := time.Now()
	if err := st.run("snapshotting", func() error {
		pa, ok := inst.(hypervisor.Pauser)
		sn, ok2 := inst.(hypervisor.Snapshotter)
		if !ok || !ok2 {
			return fmt.Errorf("the %s backend cannot snapshot a VM", p.backend.Name())
		}
		if err := pa.Pause(ctx); err != nil {
			return err
		}
		if err := os.Mkdir(snap, 0o700); err != nil {
			return err
		}
		return sn.Snapshot(ctx, snap)
	}); err != nil {
		return nil, err
	}
	t.SnapshotMS = time.Since(t1).Milliseconds()
	if err := inst.Kill(); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(build, "memory.ram")) // moved into the snapshot, or a copy's original
	t.Created = time.Now().UTC()
	data, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(build, templateMeta), append(data, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(build, final); err != nil {
		return nil, err
	}
	t.dir = final
	os.RemoveAll(rt)
	e.log.Info("image snapshotted for warm creates", "image", name, "template", final, "boot", time.Duration(t.BootMS)*time.Millisecond,
		"snapshot", time.Duration(t.SnapshotMS)*time.Millisecond)
	st.pr.Log(fmt.Sprintf("image %s is warm: later creates restore its snapshot", name))
	if err := e.collect(context.WithoutCancel(ctx), false); err != nil {
		e.log.Warn("removing unused templates and bases", "err", err)
	}
	return t, nil
}

// templateCID is the vsock context id of a template VM: from the top of
// the range, where no lease reaches.
func templateCID(id string) uint32 {
	var h uint32
	for _, c := range id {
		h = h*31 + uint32(c)
	}
	return 0xF0000000 + h%0x0FFFFFF0
}

// waitSettled polls the agent until the guest's init has started what it
// starts at boot and sshd listens: what the template's restores then need
// not do again.
func waitSettled(ctx context.Context, c *agent.Client, inst hypervisor.Instance) error {
	var last *agent.Health
	for {
		if inst.Exited() {
			return fmt.Errorf("the template VM exited (%s)", inst.Exit())
		}
		hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		h, err := c.HealthDetail(hctx)
		cancel()
		if err == nil {
			if h.Settled && h.SSHListening {
				return nil
			}
			last = h
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the template VM's boot to settle: %w (last: settled=%v ssh=%v)", ctx.Err(), last != nil && last.Settled, last != nil && last.SSHListening)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// collect removes what no VM or newest template needs: templates older
// than their image's newest (their snapshot at once, their disks once no
// VM's disk reads from them), every template of an image that is gone,
// and unused bases. atStart also removes the leftovers of builds that a
// daemon stopped before they finished.
func (e *Engine) collect(ctx context.Context, atStart bool) error {
	e.disks.mu.Lock()
	defer e.disks.mu.Unlock()
	vmDirs := subdirs(filepath.Join(e.cfg.DataDir, "vms"), func(string) bool { return true })
	refs := map[string]bool{}
	backings(vmDirs, refs)
	read := func(dir string) bool {
		return refs[filepath.Join(dir, rootQcow2)] || refs[filepath.Join(dir, workQcow2)] ||
			refs[filepath.Join(dir, rootRaw)] || refs[filepath.Join(dir, workRaw)]
	}
	var errs []error
	b, berr := e.Bundle()
	root := filepath.Join(e.cfg.DataDir, "templates")
	for _, imgDir := range subdirs(root, func(string) bool { return true }) {
		image := filepath.Base(imgDir)
		exists := false
		if berr == nil {
			_, err := e.cfg.Images.Resolve(ctx, b, image)
			exists = err == nil
		}
		newest := ""
		if ts := e.templates(image); len(ts) > 0 && exists {
			newest = ts[0].dir
		}
		for _, dir := range subdirs(imgDir, func(n string) bool { return !strings.HasPrefix(n, ".") }) {
			switch {
			case dir == newest:
			case read(dir):
				// The snapshot goes (running restores keep the pages they
				// map); the disks stay under the VMs that read them.
				if _, err := os.Stat(filepath.Join(dir, templateSnapshot)); err == nil {
					e.log.Info("removing an old snapshot; its disks stay for the VMs over them", "template", dir)
					errs = append(errs, os.RemoveAll(filepath.Join(dir, templateSnapshot)))
				}
			default:
				e.log.Info("removing an unused template", "template", dir)
				errs = append(errs, os.RemoveAll(dir))
			}
		}
		if atStart {
			for _, dir := range subdirs(imgDir, func(n string) bool { return strings.HasPrefix(n, ".build-") }) {
				e.log.Info("removing a template build that did not finish", "dir", dir)
				errs = append(errs, os.RemoveAll(dir))
			}
		}
		os.Remove(imgDir) // when empty
	}
	var tmplDirs []string
	for _, imgDir := range subdirs(root, func(string) bool { return true }) {
		tmplDirs = append(tmplDirs, subdirs(imgDir, func(string) bool { return true })...)
	}
	var keep []string
	if berr == nil {
		keep = e.imageFiles(ctx, b)
	}
	errs = append(errs, e.disks.collectBases(vmDirs, tmplDirs, keep))
	return errors.Join(errs...)
}

// DeleteImage deletes image name (Images.Delete) and its snapshots, unless
// VMs' disks are overlays over it: a clear error then names them.
func (e *Engine) DeleteImage(ctx context.Context, b *bundle.Bundle, name string) error {
	vms, err := e.cfg.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var users []string
	for _, v := range vms {
		if v.Image == name && v.DiskFormat == string(hypervisor.DiskQcow2) {
			users = append(users, v.Name)
		}
	}
	if len(users) > 0 {
		if _, err := e.cfg.Images.Store.GetImage(ctx, name); err == nil {
			return invalid("image %s is in use: the disks of %s are copy-on-write over it: delete %s first ('banger vm delete %s'), then the image",
				name, strings.Join(users, ", "), plural(len(users), "that VM", "those VMs"), strings.Join(users, " "))
		}
	}
	if err := e.cfg.Images.Delete(ctx, b, name); err != nil {
		return err
	}
	if err := e.collect(ctx, false); err != nil {
		e.log.Warn("removing the snapshots of a deleted image", "image", name, "err", err)
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// reapTemplateVMs ends the template VMs that a daemon which died during a
// template build left running (their runtime directories name them), and
// removes their TAP devices and those directories; collect then removes
// the builds' half-made templates. It runs at daemon start, when no build runs.
func (e *Engine) reapTemplateVMs(ctx context.Context) error {
	var errs []error
	for _, dir := range subdirs(filepath.Join(e.cfg.RuntimeDir, "templates"), func(string) bool { return true }) {
		spec := hypervisor.Spec{ID: "t" + filepath.Base(dir), Dir: dir}
		for _, be := range e.cfg.Backends {
			inst, err := be.Attach(ctx, spec)
			if err != nil {
				continue
			}
			e.log.Info("killing a template VM a stopped daemon left running", "dir", dir, "pid", inst.PID())
			if r, ok := inst.(interface{ MarkRequested() }); ok {
				r.MarkRequested()
			}
			errs = append(errs, inst.Kill())
		}
		if err := e.cfg.Network.DeleteTAP(ctx, e.cfg.Names.TAPName("t"+filepath.Base(dir))); err != nil {
			errs = append(errs, fmt.Errorf("removing the TAP device of template VM %s: %w", filepath.Base(dir), err))
		}
		errs = append(errs, os.RemoveAll(dir))
	}
	return errors.Join(errs...)
}

// imageBootFiles are the kernel and initramfs img's VMs boot: its own, or
// the bundle's.
func imageBootFiles(img *Image, b *bundle.Bundle) (kernel, initrd string) {
	if img.Kernel != "" {
		return img.Kernel, img.Initrd
	}
	return b.Path(b.Kernel), b.Path(b.Initrd)
}
