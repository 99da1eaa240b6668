// Package disk clones guest disk images copy-on-write (reflink, else a sparse copy) and grows them.
package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CloneMethod says how Clone copied a file.
type CloneMethod string

// Clone methods.
const (
	// Reflink shares the source's blocks copy-on-write (btrfs, XFS, bcachefs...).
	Reflink CloneMethod = "reflink"
	// SparseCopy copied only the source's data extents, leaving its holes as holes.
	SparseCopy CloneMethod = "sparse-copy"
)

// copyChunk bounds one copy_file_range or read/write step.
const copyChunk = 8 << 20

// Clone copies src to dst, sharing blocks when the filesystem can reflink and otherwise
// copying only data regions so holes stay holes. The copy is written under a temporary
// name in dst's directory, synced and renamed, so dst is never seen half-written.
// An existing dst is replaced. dst is private (0600): a VM's disks are its
// owner's alone, whatever the image's mode.
func Clone(src, dst string) (CloneMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("cloning %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("cloning %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("cloning %s: not a regular file", src)
	}
	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("cloning %s to %s: %w", src, dst, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	method := Reflink
	if err := unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())); err != nil {
		method = SparseCopy
		if err := sparseCopy(tmp, in, fi.Size()); err != nil {
			return "", fmt.Errorf("cloning %s to %s: %w", src, dst, err)
		}
	}
	if err := tmp.Chmod(0o600); err != nil {
		return "", fmt.Errorf("cloning %s to %s: %w", src, dst, err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("cloning %s to %s: syncing: %w", src, dst, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("cloning %s to %s: %w", src, dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		os.Remove(tmp.Name())
		done = true
		return "", fmt.Errorf("cloning %s to %s: %w", src, dst, err)
	}
	done = true
	if err := syncDir(dir); err != nil {
		return "", fmt.Errorf("cloning %s to %s: syncing directory: %w", src, dst, err)
	}
	return method, nil
}

// sparseCopy copies the data extents of in (size bytes) into the empty file out.
func sparseCopy(out, in *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	useCFR := true
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA support: treat the rest as data, skipping zero blocks.
			return copyRange(out, in, off, size)
		}
		end, err := unix.Seek(int(in.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding holes: %w", err)
		}
		end = min(end, size)
		if useCFR {
			err := copyFileRange(out, in, start, end)
			if err == nil {
				off = end
				continue
			}
			if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
				return err
			}
			useCFR = false // e.g. across filesystems: fall back for good
		}
		if err := copyRange(out, in, start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyFileRange copies [start, end) with copy_file_range. On an error before any byte
// moved, the caller may fall back to read/write; later errors are only reported.
func copyFileRange(out, in *os.File, start, end int64) error {
	for start < end {
		roff, woff := start, start
		n, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(end-start, copyChunk)), 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("copying at offset %d: %w", start, io.ErrUnexpectedEOF)
		}
		start += int64(n)
	}
	return nil
}

// copyRange copies [start, end) with pread/pwrite. Chunks that are all zero are not
// written (the destination is pre-sized, so they read back as zeros); that keeps
// holes even where the source has zeroed blocks or SEEK_DATA is unsupported.
func copyRange(out, in *os.File, start, end int64) error {
	buf := make([]byte, 64<<10)
	for start < end {
		n, err := in.ReadAt(buf[:min(int64(len(buf)), end-start)], start)
		if n > 0 {
			chunk := buf[:n]
			if !allZero(chunk) {
				if _, err := out.WriteAt(chunk, start); err != nil {
					return err
				}
			}
			start += int64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
