package runnertest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// FakeQemuImg makes r play qemu-img on real files, for tests on hosts
// without it: "create -q -f qcow2 -b BASE -F FMT PATH SIZE" writes a qcow2
// header (version 3, the base's name after it, no data), "info
// --output=json PATH" reads one back, and "resize -q -f qcow2 PATH SIZE"
// changes its virtual size. The files are not disks anyone could boot.
func (r *Runner) FakeQemuImg() {
	r.On("qemu-img create", func(argv []string) ([]byte, error) {
		if len(argv) != 11 || argv[2] != "-q" || argv[3] != "-f" || argv[4] != "qcow2" || argv[5] != "-b" || argv[7] != "-F" {
			return nil, fmt.Errorf("runnertest qemu-img: unexpected %q", argv)
		}
		base, path := argv[6], argv[9]
		size, err := strconv.ParseInt(argv[10], 10, 64)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(base); err != nil {
			return nil, fmt.Errorf("qemu-img: exit status 1: Could not open backing file: %w", err)
		}
		return nil, os.WriteFile(path, qcow2Header(base, argv[8], size), 0o600)
	})
	r.On("qemu-img info", func(argv []string) ([]byte, error) {
		path := argv[len(argv)-1]
		hdr, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("qemu-img: exit status 1: %w", err)
		}
		info := map[string]any{"format": "raw", "virtual-size": len(hdr), "actual-size": len(hdr)}
		if len(hdr) >= 104 && string(hdr[:4]) == "QFI\xfb" {
			off, n := binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint32(hdr[16:])
			info["format"], info["virtual-size"] = "qcow2", binary.BigEndian.Uint64(hdr[24:])
			if n > 0 && int(off)+int(n) <= len(hdr) {
				info["backing-filename"] = string(hdr[off : off+uint64(n)])
				info["backing-filename-format"] = string(hdr[off+uint64(n)+1:])
			}
		}
		return json.Marshal(info)
	})
	r.On("qemu-img resize", func(argv []string) ([]byte, error) {
		path := argv[len(argv)-2]
		size, err := strconv.ParseInt(argv[len(argv)-1], 10, 64)
		if err != nil {
			return nil, err
		}
		hdr, err := os.ReadFile(path)
		if err != nil || len(hdr) < 104 || string(hdr[:4]) != "QFI\xfb" {
			return nil, errors.New("qemu-img: exit status 1: not a qcow2 file")
		}
		binary.BigEndian.PutUint64(hdr[24:], uint64(size))
		return nil, os.WriteFile(path, hdr, 0o600)
	})
}

// qcow2Header is a version 3 qcow2 header of size bytes over base (of
// format baseFormat, kept after the name for info).
func qcow2Header(base, baseFormat string, size int64) []byte {
	const headerLen = 104
	b := make([]byte, headerLen, headerLen+len(base)+1+len(baseFormat))
	copy(b, "QFI\xfb")
	binary.BigEndian.PutUint32(b[4:], 3)
	binary.BigEndian.PutUint64(b[8:], headerLen)
	binary.BigEndian.PutUint32(b[16:], uint32(len(base)))
	binary.BigEndian.PutUint32(b[20:], 16) // cluster bits
	binary.BigEndian.PutUint64(b[24:], uint64(size))
	binary.BigEndian.PutUint32(b[96:], 4) // refcount order
	binary.BigEndian.PutUint32(b[100:], headerLen)
	b = append(b, base...)
	b = append(b, 0)
	return append(b, baseFormat...)
}
