package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/units"
)

// QemuImg is the tool that makes and reads qcow2 files (Debian package qemu-utils).
const QemuImg = "qemu-img"

// Formats of a disk file, as qemu-img names them.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Info is what qemu-img reports about a disk file.
type Info struct {
	Format string `json:"format"`
	// VirtualSize is the size the guest sees; ActualSize the bytes the
	// file takes on the host.
	VirtualSize int64 `json:"virtual-size"`
	ActualSize  int64 `json:"actual-size"`
	// BackingFile is the base of an overlay, as recorded in it.
	BackingFile   string `json:"backing-filename,omitempty"`
	BackingFormat string `json:"backing-filename-format,omitempty"`
}

// maxInfoSize bounds qemu-img info's output.
const maxInfoSize = 1 << 16

// ReadInfo runs qemu-img info on path, without following its backing chain.
func ReadInfo(ctx context.Context, r runner.Runner, path string) (Info, error) {
	var info Info
	out, err := r.Run(ctx, QemuImg, "info", "--output=json", path)
	if err != nil {
		return info, fmt.Errorf("reading disk %s: %w%s", path, err, qemuImgHint(err))
	}
	if len(out) > maxInfoSize {
		return info, fmt.Errorf("reading disk %s: qemu-img info printed %d bytes", path, len(out))
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return info, fmt.Errorf("reading disk %s: decoding qemu-img info: %w", path, err)
	}
	if info.Format == "" || info.VirtualSize <= 0 {
		return info, fmt.Errorf("reading disk %s: qemu-img info gave no format or size", path)
	}
	return info, nil
}

// qemuImgHint tells how to install a missing qemu-img.
func qemuImgHint(err error) string {
	if errors.Is(err, exec.ErrNotFound) {
		return " (qemu-img is in the Debian package qemu-utils: run apt-get install qemu-utils)"
	}
	return ""
}

// Overlay makes a qcow2 file at overlay that reads from base (a raw or
// qcow2 image of baseFormat) until the guest writes: a new VM's disk that
// costs a few hundred KiB and the same time whatever base's size. size is
// the virtual size, 0 for base's own; it is never smaller than base. The
// overlay records base's absolute path: base must stay where it is and
// unchanged for as long as an overlay uses it (QEMU opens it read-only).
// The overlay is made under a temporary name and renamed, mode 0600; an
// existing file at overlay is replaced.
//
// qemu-img writes the same bytes for the same base, format and size (a
// new overlay holds only its header and empty tables), so Overlay keeps
// the file it made last over an unchanged base and writes a copy of it
// the next time, without running qemu-img twice (about 25 ms per disk).
func Overlay(ctx context.Context, r runner.Runner, base, baseFormat, overlay string, size int64) error {
	fail := func(err error) error { return fmt.Errorf("making overlay %s over %s: %w", overlay, base, err) }
	if baseFormat != FormatRaw && baseFormat != FormatQcow2 {
		return fail(fmt.Errorf("base format %q: use %s or %s", baseFormat, FormatRaw, FormatQcow2))
	}
	abs, err := filepath.Abs(base)
	if err != nil {
		return fail(err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fail(err)
	}
	if !fi.Mode().IsRegular() {
		return fail(errors.New("the base is not a regular file"))
	}
	key := overlayKey{base: abs, format: baseFormat, size: size, id: FileIdentity(fi)}
	cached := overlays.get(key) // its size was checked when qemu-img made it
	if cached == nil {
		baseSize := fi.Size()
		if baseFormat == FormatQcow2 {
			info, err := ReadInfo(ctx, r, abs)
			if err != nil {
				return fail(err)
			}
			baseSize = info.VirtualSize
		}
		if size == 0 {
			size = baseSize
		}
		if size < baseSize {
			return fail(fmt.Errorf("disk size %s is smaller than the image (%s): pick --disk-size %s or more",
				units.FormatSize(size), units.FormatSize(baseSize), units.RoundUp(baseSize)))
		}
	}
	dir := filepath.Dir(overlay)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(overlay)+".tmp-*")
	if err != nil {
		return fail(err)
	}
	done := false
	defer func() {
		if !done {
			os.Remove(tmp.Name())
		}
	}()
	if cached != nil {
		err = writeSparse(tmp, cached)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fail(err)
		}
	} else {
		tmp.Close()
		if _, err := r.Run(ctx, QemuImg, "create", "-q", "-f", FormatQcow2, "-b", abs, "-F", baseFormat, tmp.Name(), fmt.Sprint(size)); err != nil {
			return fail(fmt.Errorf("%w%s", err, qemuImgHint(err)))
		}
		if data, err := os.ReadFile(tmp.Name()); err == nil && len(data) <= maxCachedOverlay {
			overlays.put(key, data)
		}
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return fail(err)
	}
	if err := syncPath(tmp.Name()); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), overlay); err != nil {
		return fail(err)
	}
	done = true
	if err := syncDir(dir); err != nil {
		return fail(fmt.Errorf("syncing directory: %w", err))
	}
	return nil
}

// maxCachedOverlay bounds the size of a new overlay Overlay keeps: a few
// hundred KiB of header and tables for the largest disks banger makes.
const maxCachedOverlay = 4 << 20

// maxCachedOverlays bounds how many Overlay keeps (one per disk of each
// image and template in use, in practice).
const maxCachedOverlays = 64

// overlayKey is what a new overlay's bytes depend on: its base, named by
// path and by its FileIdentity, the base's format and the size asked for.
type overlayKey struct {
	base, format string
	size         int64
	id           string
}

// FileIdentity names a file's content as the filesystem knows it: device,
// inode, size and modification and change times ("" without them). A file
// rewritten in place or replaced gets another.
func FileIdentity(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
}

// overlayCache holds the bytes of the overlays qemu-img made, by what they
// depend on.
type overlayCache struct {
	mu   sync.Mutex
	byID map[overlayKey][]byte
}

var overlays overlayCache

func (c *overlayCache) get(k overlayKey) []byte {
	if k.id == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byID[k]
}

func (c *overlayCache) put(k overlayKey, data []byte) {
	if k.id == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID == nil || len(c.byID) >= maxCachedOverlays {
		c.byID = map[overlayKey][]byte{} // rarely full: start again
	}
	c.byID[k] = data
}

// writeSparse writes data into the empty file f, its zero blocks left as
// holes.
func writeSparse(f *os.File, data []byte) error {
	const block = 4096
	for off := 0; off < len(data); off += block {
		chunk := data[off:min(off+block, len(data))]
		if allZero(chunk) {
			continue
		}
		if _, err := f.WriteAt(chunk, int64(off)); err != nil {
			return err
		}
	}
	return f.Truncate(int64(len(data)))
}

// GrowOverlay enlarges the virtual disk of the qcow2 file at path to size
// bytes. It refuses to shrink and does nothing at the same size. Only the
// disk grows: the filesystem inside is grown by the guest, online
// (resize2fs on the mounted root), since nothing on the host can write
// into a qcow2 file's ext4 without mounting it. The disk must not be in use.
func GrowOverlay(ctx context.Context, r runner.Runner, path string, size int64) error {
	info, err := ReadInfo(ctx, r, path)
	if err != nil {
		return fmt.Errorf("growing %s: %w", path, err)
	}
	if info.Format != FormatQcow2 {
		return fmt.Errorf("growing %s: it is %s, not qcow2 (grow a raw image with Grow)", path, info.Format)
	}
	if size < info.VirtualSize {
		return fmt.Errorf("growing %s: size %s is smaller than the disk (%s): disks only grow, pick %s or more",
			path, units.FormatSize(size), units.FormatSize(info.VirtualSize), units.RoundUp(info.VirtualSize))
	}
	if size == info.VirtualSize {
		return nil
	}
	if _, err := r.Run(ctx, QemuImg, "resize", "-q", "-f", FormatQcow2, path, fmt.Sprint(size)); err != nil {
		return fmt.Errorf("growing %s to %s: %w", path, units.FormatSize(size), err)
	}
	return nil
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// qcow2 header fields Backing reads (all big-endian).
const (
	qcow2Magic        = 0x514649fb // "QFI\xfb"
	qcow2HeaderSize   = 72         // version 2; version 3 adds fields after it
	maxBackingNameLen = 1023       // QEMU's own limit
	maxBackingOffset  = 1 << 16    // the name follows the header, inside its first cluster
)

// Backing reads the base a qcow2 file at path is an overlay over, from its
// header, without running qemu-img: "" when it has none. A file that is not
// qcow2 is an error. Only qemu-img writes these headers (a guest writes
// data clusters, never the header), so this is banger's own record of
// which base a VM's disk needs.
func Backing(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading the base of %s: %w", path, err)
	}
	defer f.Close()
	hdr := make([]byte, qcow2HeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("reading the base of %s: %w", path, err)
	}
	return parseBacking(hdr, f, path)
}

func parseBacking(hdr []byte, r io.ReaderAt, path string) (string, error) {
	if binary.BigEndian.Uint32(hdr[0:4]) != qcow2Magic {
		return "", fmt.Errorf("reading the base of %s: it is not a qcow2 file", path)
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 && v != 3 {
		return "", fmt.Errorf("reading the base of %s: qcow2 version %d", path, v)
	}
	off := binary.BigEndian.Uint64(hdr[8:16])
	n := binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || n == 0 {
		return "", nil
	}
	if off < qcow2HeaderSize || off > maxBackingOffset || n > maxBackingNameLen {
		return "", fmt.Errorf("reading the base of %s: a backing file name of %d bytes at %d is not qemu-img's", path, n, off)
	}
	name := make([]byte, n)
	if _, err := r.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("reading the base of %s: %w", path, err)
	}
	if bytes.IndexByte(name, 0) >= 0 || !utf8.Valid(name) {
		return "", fmt.Errorf("reading the base of %s: the backing file name is not a path", path)
	}
	return string(name), nil
}
