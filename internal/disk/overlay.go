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
	dir := filepath.Dir(overlay)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(overlay)+".tmp-*")
	if err != nil {
		return fail(err)
	}
	tmp.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmp.Name())
		}
	}()
	if _, err := r.Run(ctx, QemuImg, "create", "-q", "-f", FormatQcow2, "-b", abs, "-F", baseFormat, tmp.Name(), fmt.Sprint(size)); err != nil {
		return fail(fmt.Errorf("%w%s", err, qemuImgHint(err)))
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
