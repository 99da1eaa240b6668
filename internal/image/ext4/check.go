package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Magic is the ext2/3/4 superblock's magic number; the superblock starts
// at byte 1024 and the magic is 0x38 into it.
const Magic = 0xEF53

const magicOffset = 1024 + 0x38

// Check refuses anything but an absolute path to a regular file that
// holds an ext2/3/4 filesystem. It looks before it opens, and opens without
// blocking, so a FIFO or a device is refused at once.
func Check(path string) error {
	if !filepath.IsAbs(path) {
		return errors.New("must be an absolute path")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("is not a regular file (it is a %s)", kindOf(fi.Mode()))
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("is not a regular file")
	}
	var magic [2]byte
	if _, err := f.ReadAt(magic[:], magicOffset); err != nil || binary.LittleEndian.Uint16(magic[:]) != Magic {
		return errors.New("is not an ext4 filesystem image (make one with mkfs.ext4 -d DIR FILE SIZE)")
	}
	return nil
}

func kindOf(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// WriteMagic makes path a sparse file of size bytes that Check takes for an
// ext4 image: only the superblock's magic is there. It is for tests of
// what registers images.
func WriteMagic(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var m [2]byte
	binary.LittleEndian.PutUint16(m[:], Magic)
	if _, err := f.WriteAt(m[:], magicOffset); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("sizing %s: %w", path, err)
	}
	return f.Close()
}
