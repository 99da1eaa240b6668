package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// fakeELF is an ELF header followed by size-64 bytes of compressible filler.
func fakeELF(size int) []byte {
	b := make([]byte, size)
	copy(b, elfMagic)
	for i := 64; i < size; i++ {
		b[i] = byte(i / 4096)
	}
	return b
}

// lz4Legacy compresses data the way the kernel build does: legacy frame, 8 MiB
// blocks, then the uncompressed size as a trailing little-endian word.
func lz4Legacy(t *testing.T, data []byte) []byte {
	t.Helper()
	out := append([]byte{}, lz4LegacyMagic...)
	for len(data) > 0 {
		chunk := data[:min(len(data), lz4LegacyBlockSize)]
		data = data[len(chunk):]
		dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
		n, err := lz4.CompressBlock(chunk, dst, nil)
		if err != nil || n == 0 {
			t.Fatalf("lz4.CompressBlock = %d, %v", n, err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(n))
		out = append(out, dst[:n]...)
	}
	return out
}

func withSize(payload []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte{}, payload...), uint32(size))
}

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bzImage wraps payload in a setup header with setupSects sectors of real-mode code.
func bzImage(setupSects int, payload []byte) []byte {
	const payloadOffset = 0x3c0 // relative to the protected-mode code
	sects := setupSects
	if sects == 0 {
		sects = 4 // what the boot protocol assumes for 0
	}
	pm := (sects + 1) * 512
	b := make([]byte, pm+payloadOffset+len(payload)+100)
	b[offSetupSects] = byte(setupSects)
	copy(b[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint32(b[offPayloadOffset:], payloadOffset)
	binary.LittleEndian.PutUint32(b[offPayloadLength:], uint32(len(payload)))
	copy(b[pm+payloadOffset:], payload)
	return b
}

func TestExtractVmlinux(t *testing.T) {
	small := fakeELF(64 << 10)
	big := fakeELF(lz4LegacyBlockSize + 1<<20) // two lz4 blocks
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr string
	}{
		{"lz4 one block", bzImage(27, withSize(lz4Legacy(t, small), len(small))), small, ""},
		{"lz4 two blocks", bzImage(31, withSize(lz4Legacy(t, big), len(big))), big, ""},
		{"lz4 no trailer", bzImage(4, lz4Legacy(t, small)), small, ""},
		{"lz4 setup_sects 0 means 4", bzImage(0, withSize(lz4Legacy(t, small), len(small))), small, ""},
		{"gzip", bzImage(27, withSize(gzipped(t, small), len(small))), small, ""},
		{"lz4 bad trailer", bzImage(27, withSize(lz4Legacy(t, small), 7)), nil, "trailer says 7"},
		{"lz4 truncated", bzImage(27, lz4Legacy(t, small)[:100]), nil, "overruns"},
		{"xz", bzImage(27, []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}), nil, "unsupported xz payload compression (magic fd 37 7a 58 5a 00)"},
		{"zstd", bzImage(27, []byte{0x28, 0xb5, 0x2f, 0xfd, 1}), nil, "unsupported zstd"},
		{"not elf", bzImage(27, withSize(lz4Legacy(t, []byte("hello world hello world")), 23)), nil, "not an ELF header"},
		{"no HdrS", make([]byte, 4096), nil, "not an x86 bzImage"},
		{"short", []byte{1, 2, 3}, nil, "too short"},
		{"payload outside", func() []byte {
			b := bzImage(27, []byte{1})
			binary.LittleEndian.PutUint32(b[offPayloadLength:], 1<<30)
			return b
		}(), nil, "outside"},
	}
	for _, tt := range tests {
		got, err := extract(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ExtractVmlinux(%s) = %v, want error containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ExtractVmlinux(%s) = %v, want %d bytes", tt.name, err, len(tt.want))
			continue
		}
		if !bytes.Equal(got, tt.want) {
			t.Errorf("ExtractVmlinux(%s) = %d bytes, want %d identical bytes", tt.name, len(got), len(tt.want))
		}
	}
}

func TestExtractVmlinuxFile(t *testing.T) {
	dir := t.TempDir()
	small := fakeELF(4096)
	src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(src, bzImage(27, withSize(lz4Legacy(t, small), len(small))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ExtractVmlinuxFile(src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, small) {
		t.Errorf("ExtractVmlinuxFile wrote %d bytes (%v), want %d", len(got), err, len(small))
	}
	if err := ExtractVmlinuxFile(filepath.Join(dir, "missing"), dst); err == nil {
		t.Errorf("ExtractVmlinuxFile(missing) = nil, want an error")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("ExtractVmlinuxFile left %d files in %s, want 2", len(entries), dir)
	}
}

// hasXenPVHNote reports whether the ELF has a PT_NOTE with the Xen note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
func hasXenPVHNote(t *testing.T, b []byte) bool {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parsing vmlinux ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			t.Fatalf("reading PT_NOTE: %v", err)
		}
		for len(data) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(data[0:]))
			descsz := int(binary.LittleEndian.Uint32(data[4:]))
			typ := binary.LittleEndian.Uint32(data[8:])
			data = data[12:]
			nameEnd := (namesz + 3) &^ 3
			descEnd := nameEnd + (descsz+3)&^3
			if descEnd > len(data) {
				break
			}
			name := strings.TrimRight(string(data[:namesz]), "\x00")
			if name == "Xen" && typ == 18 {
				return true
			}
			data = data[descEnd:]
		}
	}
	return false
}

func TestExtractVmlinuxRealKernel(t *testing.T) {
	p := realKernel(t)
	bz, err := os.ReadFile(p.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := bzImagePayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes, payload magic % x", filepath.Base(p.Vmlinuz), len(bz), payload[:4])
	out, err := extract(bz)
	if err != nil {
		t.Fatalf("ExtractVmlinux(%s) = %v", p.Vmlinuz, err)
	}
	t.Logf("vmlinux: %d bytes", len(out))
	if !hasXenPVHNote(t, out) {
		t.Errorf("ExtractVmlinux(%s) has no Xen PVH note (type 18), want one: Firecracker cannot boot it", p.Vmlinuz)
	}
}
