// Package atomicfile replaces files whole, so readers see the old content or the new, never a mix.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// TempPattern is the os.CreateTemp pattern of Write's temporary files for
// base: hidden, and marked ".tmp-" so cleanups can recognise leftovers.
func TempPattern(base string) string { return "." + base + ".tmp-*" }

// Write replaces path with data and mode perm: it writes a temporary file
// in the same directory, syncs it, renames it over path and syncs the
// directory (best effort), so a crash leaves the old file or the new one.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

// WriteUnsynced replaces path as Write does, but syncs neither the file nor
// its directory: for a batch of files that the caller makes durable with
// one sync of their filesystem afterwards (unix.Syncfs), where two syncs
// per file cost more (a guest under emulation). Readers still see the old
// content or the new; until that sync a crash leaves the old file or the
// new one on ext4 (whose auto_da_alloc writes a file renamed over another
// before the rename), and may leave an empty one elsewhere.
func WriteUnsynced(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, sync bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, TempPattern(filepath.Base(path)))
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("writing %s: %w", path, err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if sync {
		if err = f.Sync(); err != nil {
			return err
		}
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync() // the file itself is already on disk
		d.Close()
	}
	return nil
}
