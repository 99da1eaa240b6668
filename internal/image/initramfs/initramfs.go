// Package initramfs writes the gzip-compressed cpio initramfs holding banger-init and the kernel modules it loads.
package initramfs

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/banger/banger/internal/guest/initrd"
	"github.com/banger/banger/internal/image/kernel"
)

// Spec describes an initramfs.
type Spec struct {
	// Init is the path of the static banger-init binary, installed as /init.
	Init string
	// KernelVersion is the kernel release the modules belong to.
	KernelVersion string
	// Modules are the modules /init loads, in load order (see kernel.LoadOrder).
	Modules []kernel.Module
}

// DefaultModules are the modules a banger guest needs before it can mount its
// root disk and talk to the host, and virtiofs (with fuse) for host folders,
// which the minimal image, carrying no modules, could not load later.
// Built-in ones are skipped by kernel.LoadOrder.
func DefaultModules() []string {
	return []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "vmw_vsock_virtio_transport", "ext4", "virtiofs"}
}

// entry is one file or directory of the archive.
type entry struct {
	mode cpio.FileMode
	src  string // file to copy, for regular files read from disk
	data []byte // contents, for generated files
}

// Write writes the initramfs as a gzip-compressed newc cpio. The output
// depends only on the inputs' contents: entries are sorted, owned by root and
// dated at the epoch.
func Write(w io.Writer, s Spec) error {
	entries, err := s.entries()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)

	zw := gzip.NewWriter(w) // a zero header: no name, no mtime
	cw := cpio.NewWriter(zw)
	for i, name := range names {
		e := entries[name]
		data := e.data
		if e.src != "" {
			if data, err = os.ReadFile(e.src); err != nil {
				return fmt.Errorf("writing initramfs: %w", err)
			}
		}
		hdr := &cpio.Header{
			Name:    name,
			Mode:    e.mode,
			Size:    int64(len(data)),
			Links:   1,
			Inode:   int64(i + 1),
			ModTime: time.Unix(0, 0),
		}
		if e.mode&cpio.ModeType == cpio.TypeDir {
			hdr.Links = 2
			hdr.Size = 0
		}
		if err := cw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("writing initramfs entry %s: %w", name, err)
		}
		if _, err := cw.Write(data); err != nil {
			return fmt.Errorf("writing initramfs entry %s: %w", name, err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	return nil
}

// entries lists the archive's contents by path (without a leading slash).
func (s Spec) entries() (map[string]entry, error) {
	if s.Init == "" {
		return nil, fmt.Errorf("writing initramfs: no init binary given")
	}
	if s.KernelVersion == "" || strings.ContainsAny(s.KernelVersion, "/ ") {
		return nil, fmt.Errorf("writing initramfs: invalid kernel version %q", s.KernelVersion)
	}
	out := map[string]entry{}
	addDirs := func(p string) {
		for d := p; d != "." && d != "/"; d = path.Dir(d) {
			out[d] = entry{mode: cpio.TypeDir | 0o755}
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "etc"} {
		addDirs(d)
	}
	modDir := path.Join("lib/modules", s.KernelVersion)
	addDirs(modDir)

	out["init"] = entry{mode: cpio.TypeReg | 0o755, src: s.Init}
	cfg := initrd.Config{Modules: []string{}}
	for _, m := range s.Modules {
		rel := filepath.ToSlash(m.RelPath)
		if rel == "" || path.IsAbs(rel) || rel != path.Clean(rel) || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("writing initramfs: module %s has invalid relative path %q", m.Name, m.RelPath)
		}
		p := path.Join(modDir, rel)
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("writing initramfs: module %s listed twice", rel)
		}
		addDirs(path.Dir(p))
		out[p] = entry{mode: cpio.TypeReg | 0o644, src: m.Path}
		cfg.Modules = append(cfg.Modules, rel)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("writing initramfs: encoding %s: %w", initrd.ConfigPath, err)
	}
	out[strings.TrimPrefix(initrd.ConfigPath, "/")] = entry{mode: cpio.TypeReg | 0o644, data: append(js, '\n')}
	return out, nil
}

// Build writes the initramfs to path atomically.
func Build(path string, s Spec) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := Write(tmp, s); err != nil {
		tmp.Close()
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("building initramfs %s: %w", path, err)
	}
	return nil
}
