package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
)

// How a VM's disks are made depends on its backend:
//
//   - A backend that opens qcow2 files (QEMU) gets a qcow2 overlay per disk:
//     a few hundred KiB, made in milliseconds whatever the image's size. An
//     overlay reads from a read-only base until the guest writes. The bases
//     are banger's own files under DataDir/bases: the image's rootfs and
//     work-seed as they were when a VM first used them or the image was
//     registered (a hard link to banger's own image files, which are only
//     ever replaced by a rename, else a copy), so that rebuilding the
//     bundle or an image, or deleting it, never changes a disk under a VM.
//     A current image's bases stay when no VM reads them: the next create
//     would copy again otherwise. A warm create's overlays are over
//     its template's disks instead.
//   - Any other backend (Firecracker takes raw files only) gets raw clones:
//     a reflink where the filesystem has them, else a sparse copy, which
//     costs what the image holds; a larger size is grown on the host.
//
// The growth of a disk is in one place, growDisk, whatever its format.

// Disk file names in a VM's (or a template's) directory, by format.
const (
	rootRaw   = "rootfs.ext4"
	workRaw   = "work.ext4"
	rootQcow2 = "root.qcow2"
	workQcow2 = "work.qcow2"
)

// RootDisk is the path of vm's root disk, WorkDisk of its /root disk.
func RootDisk(vm *store.VM) string { return filepath.Join(vm.Dir, diskName("root", vm.DiskFormat)) }
func WorkDisk(vm *store.VM) string { return filepath.Join(vm.Dir, diskName("work", vm.DiskFormat)) }

// diskName is the file name of a VM's disk (root or work) in format.
func diskName(which, format string) string {
	q := format == string(hypervisor.DiskQcow2)
	switch {
	case which == "root" && q:
		return rootQcow2
	case which == "root":
		return rootRaw
	case q:
		return workQcow2
	}
	return workRaw
}

// diskFormatFor is the disk format VMs get on be: qcow2 overlays where it
// takes them, raw clones otherwise.
func diskFormatFor(be hypervisor.Backend) string {
	if hypervisor.TakesFormat(be, hypervisor.DiskQcow2) {
		return string(hypervisor.DiskQcow2)
	}
	return string(hypervisor.DiskRaw)
}

// growDisk grows the disk file at path (of format) to size bytes. A raw
// file's ext4 is grown on the host, offline; a qcow2 overlay's virtual disk
// grows, and the guest agent grows the ext4 on it online at the next boot
// (agent.Identity.GrowFilesystems). The disk must not be in use.
func growDisk(ctx context.Context, r runner.Runner, path, format string, size int64) error {
	if format == string(hypervisor.DiskQcow2) {
		return disk.GrowOverlay(ctx, r, path, size)
	}
	cur, err := disk.Size(path)
	if err != nil || size <= cur {
		return err
	}
	return disk.Grow(ctx, r, path, size)
}

// disks makes VMs' and templates' disk files and keeps the read-only files
// that overlays read from: bases (DataDir/bases) and templates' disks.
// collect removes those nothing reads any more; mu keeps it from removing
// one that a create is about to use.
type disks struct {
	dataDir string
	r       runner.Runner
	log     *slog.Logger
	mu      sync.Mutex
}

func (d *disks) basesDir() string { return filepath.Join(d.dataDir, "bases") }

// baseRecord is what a base was made from, beside it as NAME.json: the
// base must still be what it was (size and mtime) for an overlay to read
// it right.
type baseRecord struct {
	Source  string `json:"source"`
	Method  string `json:"method"` // hardlink, reflink or sparse-copy
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

// base returns banger's read-only copy of src, making it on first use: a
// hard link when link is set (src is banger's own file, replaced only by a
// rename) and the filesystem allows one, else a reflink or sparse copy.
// Bases are named by src's path and identity (device, inode, size, mtime),
// so a changed src gets a new base and the old one stays for the VMs that
// read it. Call it with d.mu held.
func (d *disks) base(src string, link bool) (string, error) {
	abs, fi, path, err := d.basePath(src)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path); err == nil {
		return path, d.checkBase(path)
	}
	if err := os.MkdirAll(d.basesDir(), 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(d.basesDir(), "."+filepath.Base(path)+".tmp")
	os.Remove(tmp)
	method := "hardlink"
	if !link || os.Link(abs, tmp) != nil {
		m, err := disk.Clone(abs, tmp)
		if err != nil {
			return "", fmt.Errorf("keeping a copy of %s for VMs' disks: %w", src, err)
		}
		method = string(m)
	}
	bfi, err := os.Stat(tmp)
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	if method == "hardlink" && (bfi.Size() != fi.Size() || !bfi.ModTime().Equal(fi.ModTime())) {
		os.Remove(tmp)
		return "", fmt.Errorf("image file %s changed while banger linked it: retry", src)
	}
	rec := baseRecord{Source: abs, Method: method, Size: bfi.Size(), ModTime: bfi.ModTime().UnixNano()}
	data, _ := json.Marshal(rec)
	if err := atomicfile.Write(path+".json", append(data, '\n'), 0o600); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		os.Remove(path + ".json")
		return "", err
	}
	d.log.Info("kept a base for VMs' disks", "source", abs, "base", path, "method", method)
	return path, nil
}

// basePath is where the base of src is kept while src is what it is now
// (its path and identity: device, inode, size, mtime), with src's
// absolute path and file info.
func (d *disks) basePath(src string) (string, os.FileInfo, string, error) {
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", nil, "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", nil, "", fmt.Errorf("reading image file %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", nil, "", fmt.Errorf("image file %s is not a regular file", src)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var dev, ino uint64
	if st != nil {
		dev, ino = st.Dev, st.Ino
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d\x00%d\x00%d", abs, dev, ino, fi.Size(), fi.ModTime().UnixNano()))
	name := strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
	return abs, fi, filepath.Join(d.basesDir(), name+"-"+hex.EncodeToString(sum[:8])+".base"), nil
}

// checkBase refuses a base that is no longer what it was made as: one
// changed in place (through a hard link to a file someone edited) would
// hand every overlay over it other bytes than its guest wrote over.
func (d *disks) checkBase(path string) error {
	data, err := os.ReadFile(path + ".json")
	if err != nil {
		return fmt.Errorf("base %s has no record: %w", path, err)
	}
	var rec baseRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("base %s: reading its record: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() != rec.Size || fi.ModTime().UnixNano() != rec.ModTime {
		return fmt.Errorf("the image file %s was changed in place after VMs' disks were made over it (base %s, a %s): those disks can no longer be read as they were written; rebuild or re-register the image under a new file and recreate the VMs",
			rec.Source, path, rec.Method)
	}
	return nil
}

// checkBacking checks the bases a VM's qcow2 disks read from before a
// boot: present, and unchanged.
func (d *disks) checkBacking(vm *store.VM) error {
	if vm.DiskFormat != string(hypervisor.DiskQcow2) {
		return nil
	}
	for _, p := range []string{RootDisk(vm), WorkDisk(vm)} {
		b, err := disk.Backing(p)
		if err != nil {
			return err
		}
		if b == "" {
			continue
		}
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("disk %s of VM %s reads from %s, which is gone: %w", p, vm.Name, b, err)
		}
		if strings.HasPrefix(b, d.basesDir()+string(filepath.Separator)) {
			if err := d.checkBase(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// diskSpec is one disk to make: at dst, over base (a base or a template's
// disk) of baseFormat, size bytes (0: base's).
type diskSpec struct {
	dst, base, baseFormat string
	size                  int64
}

// make makes the disk files of specs in format: qcow2 overlays or raw
// clones grown to size. Call it with d.mu held while bases are involved.
func (d *disks) make(ctx context.Context, format string, specs []diskSpec) error {
	for _, s := range specs {
		if format == string(hypervisor.DiskQcow2) {
			if err := disk.Overlay(ctx, d.r, s.base, s.baseFormat, s.dst, s.size); err != nil {
				return err
			}
			continue
		}
		if _, err := disk.Clone(s.base, s.dst); err != nil {
			return err
		}
		if s.size > 0 {
			if err := growDisk(ctx, d.r, s.dst, format, s.size); err != nil {
				return err
			}
		}
	}
	return nil
}

// ownFiles reports whether img's files are banger's own, which are
// replaced by a rename, never edited: a hard link keeps what a VM reads.
// A registered file is the user's, who may edit it in place: it is copied.
func ownFiles(img *Image) bool { return !img.Registered || img.Managed }

// forImage makes a VM's (or a template's) disks in dir from an image: its
// rootfs at rootSize and its work-seed at workSize (0: the file's size).
func (d *disks) forImage(ctx context.Context, dir, format string, img *Image, seed string, rootSize, workSize int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	root, work := img.Rootfs, seed
	if format == string(hypervisor.DiskQcow2) {
		link := ownFiles(img)
		var err error
		if root, err = d.base(img.Rootfs, link); err != nil {
			return err
		}
		if work, err = d.base(seed, link); err != nil {
			return err
		}
	}
	return d.make(ctx, format, []diskSpec{
		{filepath.Join(dir, diskName("root", format)), root, disk.FormatRaw, rootSize},
		{filepath.Join(dir, diskName("work", format)), work, disk.FormatRaw, workSize},
	})
}

// forTemplate makes a warm VM's disks in dir over (qcow2) or from (raw)
// the template's.
func (d *disks) forTemplate(ctx context.Context, dir string, t *template) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.make(ctx, t.DiskFormat, []diskSpec{
		{filepath.Join(dir, diskName("root", t.DiskFormat)), t.disk("root"), t.DiskFormat, t.RootSize},
		{filepath.Join(dir, diskName("work", t.DiskFormat)), t.disk("work"), t.DiskFormat, t.WorkSize},
	})
}

// copyOf copies src's disk files into dir (a fork: the source is paused,
// its hypervisor has flushed them). Overlays stay overlays over the same
// bases, so the copy costs what the source wrote.
func (d *disks) copyOf(src *store.VM, dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, which := range []string{"root", "work"} {
		name := diskName(which, src.DiskFormat)
		if _, err := disk.Clone(filepath.Join(src.Dir, name), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// qcow2Files lists the qcow2 disk files directly in dir.
func qcow2Files(dir string) []string {
	var out []string
	for _, name := range []string{rootQcow2, workQcow2} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// backings adds to refs the files that the qcow2 disks in dirs read from.
func backings(dirs []string, refs map[string]bool) {
	for _, dir := range dirs {
		for _, p := range qcow2Files(dir) {
			if b, err := disk.Backing(p); err == nil && b != "" {
				refs[filepath.Clean(b)] = true
			}
		}
	}
}

// subdirs lists the directories in dir whose names pass keep.
func subdirs(dir string, keep func(name string) bool) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && keep(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// collectBases removes the bases that no disk in vmDirs or tmplDirs reads
// from, except the current bases of the image files in keep: the next
// create of an image would otherwise copy a registered file all over
// again, which costs what the image holds. A base of a file that has
// changed since, or of an image that is gone, goes once no disk reads it.
// Call it with d.mu held.
func (d *disks) collectBases(vmDirs, tmplDirs, keep []string) error {
	refs := map[string]bool{}
	backings(vmDirs, refs)
	backings(tmplDirs, refs)
	for _, src := range keep {
		if _, _, p, err := d.basePath(src); err == nil {
			refs[p] = true
		}
	}
	ents, err := os.ReadDir(d.basesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(d.basesDir(), name)
		switch {
		case strings.HasSuffix(name, ".base") && !refs[p]:
			d.log.Info("removing a base no disk reads from", "base", p)
			errs = append(errs, os.Remove(p), removeMissing(p+".json"))
		case strings.HasSuffix(name, ".tmp"):
			errs = append(errs, os.Remove(p))
		}
	}
	return errors.Join(errs...)
}

func removeMissing(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// imageFiles lists the files of the catalogue's images that VMs' disks
// are made from: each image's rootfs and work-seed.
func (e *Engine) imageFiles(ctx context.Context, b *bundle.Bundle) []string {
	imgs, err := e.cfg.Images.List(ctx, b)
	if err != nil {
		e.log.Warn("listing images to keep their bases", "err", err)
		return nil
	}
	var out []string
	for i := range imgs {
		out = append(out, imgs[i].Rootfs)
		if seed, err := e.cfg.Images.seedPath(b, &imgs[i]); err == nil && seed != "" {
			out = append(out, seed)
		}
	}
	return out
}

// RegisterImage registers an image (Images.Register) and, where new VMs
// get qcow2 overlays, keeps the bases of its files at once, so that even
// its first create only makes overlays. Keeping them is best effort: a
// failure is logged, and the first create tries again.
func (e *Engine) RegisterImage(ctx context.Context, b *bundle.Bundle, o RegisterOptions) (*Image, error) {
	img, err := e.cfg.Images.Register(ctx, b, o)
	if err != nil {
		return nil, err
	}
	be, err := e.Backend(b)
	if err != nil || diskFormatFor(be) != string(hypervisor.DiskQcow2) {
		return img, nil
	}
	files := []string{img.Rootfs}
	if seed, err := e.cfg.Images.seedPath(b, img); err == nil && seed != "" {
		files = append(files, seed)
	}
	link := ownFiles(img)
	e.disks.mu.Lock()
	defer e.disks.mu.Unlock()
	for _, f := range files {
		if _, err := e.disks.base(f, link); err != nil {
			e.log.Warn("keeping a base of a registered image; its first create will", "image", img.Name, "file", f, "err", err)
		}
	}
	return img, nil
}

// diskCap gives each VM its root disk from its image's rootfs, grown to
// the asked size, and its own /root disk from the image's work-seed (or,
// warm, both from the image's template): see disks. A stop keeps both; a
// delete removes them.
type diskCap struct {
	NoCapability
	images *Images
	disks  *disks
}

func (*diskCap) Name() string { return "disks" }

func (c *diskCap) Create(ctx context.Context, vm *store.VM, p *Plan) error {
	if err := os.MkdirAll(vm.Dir, 0o700); err != nil {
		return err
	}
	vm.DiskFormat = p.diskFormat
	if p.fork != nil {
		return c.disks.copyOf(p.fork, vm.Dir)
	}
	if p.warm != nil {
		return c.disks.forTemplate(ctx, vm.Dir, p.warm)
	}
	seed, err := c.images.SeedFor(ctx, p.Bundle, p.Image)
	if err != nil {
		return err
	}
	work := p.workSize
	if n, err := disk.Size(seed); err == nil && n > work {
		work = n // a seed rebuilt bigger than planned
	}
	if err := c.disks.forImage(ctx, vm.Dir, p.diskFormat, p.Image, seed, p.diskSize, work); err != nil {
		return err
	}
	vm.WorkSizeBytes = work
	return nil
}

// Prepare refuses to boot a VM whose disks read from a base that is gone
// or was changed in place.
func (c *diskCap) Prepare(_ context.Context, vm *store.VM, _ *guestconfig.Config) error {
	return c.disks.checkBacking(vm)
}

func (*diskCap) Destroy(_ context.Context, vm *store.VM) error {
	return os.RemoveAll(vm.Dir)
}

// usedBytes is the space the files in dir take on the host.
func usedBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}
