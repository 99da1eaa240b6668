package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pierrec/lz4/v4"
)

// Offsets in the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	setupHeaderEnd   = 0x250
)

var (
	elfMagic       = []byte{0x7f, 'E', 'L', 'F'}
	gzipMagic      = []byte{0x1f, 0x8b}
	lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}
)

// lz4LegacyBlockSize is the largest uncompressed block in an LZ4 legacy frame.
const lz4LegacyBlockSize = 8 << 20

// otherMagics names the compressions a bzImage may use that are not supported here.
var otherMagics = []struct {
	name  string
	magic []byte
}{
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"bzip2", []byte{'B', 'Z', 'h'}},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
}

func extract(bzImage []byte) ([]byte, error) {
	payload, err := bzImagePayload(bzImage)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch {
	case bytes.HasPrefix(payload, lz4LegacyMagic):
		out, err = decompressLZ4Legacy(payload)
	case bytes.HasPrefix(payload, gzipMagic):
		out, err = decompressGzip(payload)
	default:
		name := "unknown"
		for _, m := range otherMagics {
			if bytes.HasPrefix(payload, m.magic) {
				name = m.name
				break
			}
		}
		n := min(len(payload), 6)
		return nil, fmt.Errorf("unsupported %s payload compression (magic % x): only lz4 and gzip are supported", name, payload[:n])
	}
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(out, elfMagic) {
		n := min(len(out), 4)
		return nil, fmt.Errorf("decompressed payload starts with % x, not an ELF header", out[:n])
	}
	return out, nil
}

// ExtractVmlinuxFile reads the bzImage src and writes its ELF kernel to dst atomically.
func ExtractVmlinuxFile(src, dst string) error {
	bz, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading bzImage: %w", err)
	}
	elf, err := extract(bz)
	if err != nil {
		return fmt.Errorf("extracting vmlinux from %s: %w", src, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return fmt.Errorf("writing vmlinux %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(elf); err != nil {
		tmp.Close()
		return fmt.Errorf("writing vmlinux %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing vmlinux %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing vmlinux %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("writing vmlinux %s: %w", dst, err)
	}
	return nil
}

// bzImagePayload returns the compressed kernel that the setup header points at.
func bzImagePayload(b []byte) ([]byte, error) {
	if len(b) < setupHeaderEnd {
		return nil, fmt.Errorf("reading bzImage header: file is %d bytes, too short for a setup header", len(b))
	}
	if string(b[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, fmt.Errorf("reading bzImage header: no HdrS signature at %#x: not an x86 bzImage", offHeaderMagic)
	}
	setupSects := int(b[offSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	pm := (setupSects + 1) * 512
	off := int64(binary.LittleEndian.Uint32(b[offPayloadOffset:]))
	length := int64(binary.LittleEndian.Uint32(b[offPayloadLength:]))
	start := int64(pm) + off
	if length == 0 || start+length > int64(len(b)) {
		return nil, fmt.Errorf("reading bzImage header: payload at %d+%d lies outside the %d-byte file", start, length, len(b))
	}
	return b[start : start+length], nil
}

// decompressLZ4Legacy decodes an LZ4 legacy frame: the magic, then blocks each
// preceded by its little-endian compressed size. The kernel build appends the
// uncompressed size as a final 4-byte word, which is checked when present.
func decompressLZ4Legacy(in []byte) ([]byte, error) {
	var out bytes.Buffer
	block := make([]byte, lz4LegacyBlockSize)
	rest := in
	for len(rest) > 0 {
		if bytes.HasPrefix(rest, lz4LegacyMagic) {
			rest = rest[4:] // a (possibly concatenated) frame starts
			continue
		}
		if len(rest) < 4 {
			return nil, fmt.Errorf("decompressing lz4: %d stray bytes after the last block", len(rest))
		}
		if len(rest) == 4 {
			// A block needs at least one byte of data, so this is the size trailer.
			if size := binary.LittleEndian.Uint32(rest); int(size) != out.Len() {
				return nil, fmt.Errorf("decompressing lz4: trailer says %d bytes, decompressed %d", size, out.Len())
			}
			break
		}
		n := binary.LittleEndian.Uint32(rest)
		rest = rest[4:]
		if n == 0 || int64(n) > int64(len(rest)) {
			return nil, fmt.Errorf("decompressing lz4: block of %d bytes at offset %d overruns the %d-byte payload", n, len(in)-len(rest)-4, len(in))
		}
		m, err := lz4.UncompressBlock(rest[:n], block)
		if err != nil {
			return nil, fmt.Errorf("decompressing lz4 block at offset %d: %w", len(in)-len(rest)-4, err)
		}
		out.Write(block[:m])
		rest = rest[n:]
	}
	return out.Bytes(), nil
}

// decompressGzip decodes one gzip member, ignoring the kernel's size trailer after it.
func decompressGzip(in []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, fmt.Errorf("decompressing gzip: %w", err)
	}
	zr.Multistream(false)
	out, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("decompressing gzip: %w", err)
	}
	return out, nil
}
