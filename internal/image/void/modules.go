package void

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/banger/banger/internal/image/kernel"
)

// maxModuleSize bounds one decompressed kernel module.
const maxModuleSize = 256 << 20

// moduleSuffixes are the module file endings Void kernels use or may use.
var moduleSuffixes = []string{".ko.zst", ".ko.xz", ".ko.gz", ".ko"}

// moduleName returns the module name of a file name (dashes become
// underscores) and whether it is a module at all.
func moduleName(file string) (string, bool) {
	for _, s := range moduleSuffixes {
		if strings.HasSuffix(file, s) {
			return strings.ReplaceAll(strings.TrimSuffix(file, s), "-", "_"), true
		}
	}
	return "", false
}

// initrdModules returns names and everything they depend on from the
// modules tree dir, in load order, as uncompressed .ko files under view
// (which must be empty and stay until the initramfs is written). Void
// compresses its modules with zstd; banger-init loads plain .ko files, so the
// few the initramfs carries are decompressed here, at build time. config is
// the kernel config, which tells which modules are built in.
func initrdModules(dir, config, view string, names []string) ([]kernel.Module, error) {
	files := map[string]string{} // module name -> path relative to dir
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		name, ok := moduleName(d.Name())
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if prev, dup := files[name]; !dup || rel < prev {
			files[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning modules %s: %w", dir, err)
	}
	// Decompress the closure of names into view: modules that are not in
	// the tree are left to kernel.LoadOrder, which knows the built-in ones.
	queue := append([]string(nil), names...)
	done := map[string]bool{}
	for len(queue) > 0 {
		name := strings.ReplaceAll(queue[0], "-", "_")
		queue = queue[1:]
		if done[name] {
			continue
		}
		done[name] = true
		rel, ok := files[name]
		if !ok {
			continue
		}
		out := filepath.Join(view, plainModulePath(rel))
		if err := decompressModule(filepath.Join(dir, rel), out); err != nil {
			return nil, err
		}
		m, err := kernel.ReadModule(out)
		if err != nil {
			return nil, err
		}
		queue = append(queue, m.Depends...)
	}
	for _, f := range []string{"modules.builtin", "modules.order"} {
		if err := copyIfExists(filepath.Join(dir, f), filepath.Join(view, f)); err != nil {
			return nil, err
		}
	}
	// kernel.LoadOrder reads <modules dir>/config for the built-in modules.
	if err := copyIfExists(config, filepath.Join(view, "config")); err != nil {
		return nil, err
	}
	return kernel.LoadOrder(view, names)
}

// plainModulePath drops a compression suffix: x/virtio_blk.ko.zst -> x/virtio_blk.ko.
func plainModulePath(rel string) string {
	for _, s := range []string{".zst", ".xz", ".gz"} {
		if strings.HasSuffix(rel, ".ko"+s) {
			return strings.TrimSuffix(rel, s)
		}
	}
	return rel
}

// decompressModule writes the module src to dst, decompressing .ko.zst and
// .ko.gz files.
func decompressModule(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("reading module %s: %w", src, err)
	}
	defer in.Close()
	var r io.Reader = in
	switch {
	case strings.HasSuffix(src, ".zst"):
		zr, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return fmt.Errorf("decompressing module %s: %w", src, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(src, ".gz"):
		zr, err := gzip.NewReader(in)
		if err != nil {
			return fmt.Errorf("decompressing module %s: %w", src, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(src, ".xz"):
		return fmt.Errorf("decompressing module %s: xz-compressed modules are not supported (Void compresses with zstd): use a kernel package with .ko or .ko.zst modules", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("decompressing module %s: %w", src, err)
	}
	n, err := io.Copy(out, io.LimitReader(r, maxModuleSize+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > maxModuleSize {
		err = fmt.Errorf("more than %d bytes", maxModuleSize)
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("decompressing module %s: %w", src, err)
	}
	return nil
}

func copyIfExists(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFrom(dst, in, 0o644)
}

// writeFrom writes r to a new file dst with mode perm.
func writeFrom(dst string, r io.Reader, perm fs.FileMode) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return os.Chmod(dst, perm)
}
