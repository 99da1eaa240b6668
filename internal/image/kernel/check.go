package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
)

// MaxKernelSize is the largest kernel or initramfs an image may name.
const MaxKernelSize = 512 << 20

// CheckKernel refuses anything but an absolute path to a regular file
// holding an ELF kernel (vmlinux: what both Firecracker and QEMU's microvm
// machine boot).
func CheckKernel(path string) error {
	head, err := readHead(path, 4)
	if err != nil {
		return err
	}
	if !bytes.Equal(head, []byte("\x7fELF")) {
		return errors.New("is not an ELF kernel (vmlinux; extract it from a bzImage with 'banger runtime void-kernel' or the kernel's scripts/extract-vmlinux)")
	}
	return nil
}

// initrdMagics are the starts of the initramfs formats Linux unpacks:
// gzip, zstd, xz, lz4 (legacy), bzip2, lzma and plain newc cpio.
var initrdMagics = [][]byte{{0x1f, 0x8b}, {0x28, 0xb5, 0x2f, 0xfd}, {0xfd, '7', 'z', 'X', 'Z', 0}, {0x02, 0x21, 0x4c, 0x18}, []byte("BZh"), {0x5d, 0, 0}, []byte("070701"), []byte("070702")}

// CheckInitrd refuses anything but an absolute path to a regular file
// holding an initramfs Linux can unpack.
func CheckInitrd(path string) error {
	head, err := readHead(path, 6)
	if err != nil {
		return err
	}
	for _, m := range initrdMagics {
		if bytes.HasPrefix(head, m) {
			return nil
		}
	}
	return errors.New("is not an initramfs (a compressed or plain newc cpio archive)")
}

var releaseRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$`)

// ModulesRelease returns the kernel release whose modules dir holds: dir
// is either lib/modules/<release> itself or the lib/modules holding exactly
// one release, with modules.order or modules.dep in it.
func ModulesRelease(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", errors.New("must be an absolute path")
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", errors.New("is not a directory")
	}
	isRelease := func(d string) bool {
		for _, f := range []string{"modules.order", "modules.dep"} {
			if fi, err := os.Stat(filepath.Join(d, f)); err == nil && fi.Mode().IsRegular() {
				return true
			}
		}
		return false
	}
	if isRelease(dir) {
		if rel := filepath.Base(dir); releaseRE.MatchString(rel) {
			return rel, nil
		}
		return "", fmt.Errorf("%q is not a kernel release name", filepath.Base(dir))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var found []string
	for _, e := range entries {
		if e.IsDir() && releaseRE.MatchString(e.Name()) && isRelease(filepath.Join(dir, e.Name())) {
			found = append(found, e.Name())
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", errors.New("holds no kernel modules (a <release>/modules.order)")
	default:
		return "", fmt.Errorf("holds the modules of %d kernels: name one of %v", len(found), found)
	}
}

// readHead reads the first n bytes of a regular file at an absolute path,
// looking before it opens and opening without blocking (a FIFO is refused
// at once).
func readHead(path string, n int) ([]byte, error) {
	if !filepath.IsAbs(path) {
		return nil, errors.New("must be an absolute path")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("is not a regular file")
	}
	if fi.Size() > MaxKernelSize {
		return nil, fmt.Errorf("is %d bytes, more than %d", fi.Size(), MaxKernelSize)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, n)
	got, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading it: %w", err)
	}
	return head[:got], nil
}
