package initramfs

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/banger/banger/internal/guest/initrd"
	"github.com/banger/banger/internal/image/kernel"
)

type readEntry struct {
	mode    cpio.FileMode
	uid     int
	mtime   int64
	content string
}

// readBack decodes an initramfs into its entries, in archive order.
func readBack(t *testing.T, b []byte) ([]string, map[string]readEntry) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	cr := cpio.NewReader(zr)
	var names []string
	got := map[string]readEntry{}
	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(cr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		got[h.Name] = readEntry{h.Mode, h.Uid + h.Guid, h.ModTime.Unix(), string(data)}
	}
	return names, got
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kver := "6.1.0-56-cloud-amd64"
	spec := Spec{
		Init:          write("banger-init", "#!init"),
		KernelVersion: kver,
		Modules: []kernel.Module{
			{Name: "virtio_ring", Path: write("virtio_ring.ko", "ring"), RelPath: "kernel/drivers/virtio/virtio_ring.ko"},
			{Name: "virtio", Path: write("virtio.ko", "virtio"), RelPath: "kernel/drivers/virtio/virtio.ko"},
			{Name: "virtio_blk", Path: write("virtio_blk.ko", "blk"), RelPath: "kernel/drivers/block/virtio_blk.ko"},
		},
	}
	var buf bytes.Buffer
	if err := Write(&buf, spec); err != nil {
		t.Fatal(err)
	}
	names, got := readBack(t, buf.Bytes())
	if !slices.IsSorted(names) {
		t.Errorf("Write: entries %v, want them sorted", names)
	}
	dirMode, fileMode, exeMode := cpio.FileMode(cpio.TypeDir|0o755), cpio.FileMode(cpio.TypeReg|0o644), cpio.FileMode(cpio.TypeReg|0o755)
	mdir := "lib/modules/" + kver
	want := map[string]struct {
		mode    cpio.FileMode
		content string
	}{
		"init":                          {exeMode, "#!init"},
		"dev":                           {dirMode, ""},
		"proc":                          {dirMode, ""},
		"sys":                           {dirMode, ""},
		"newroot":                       {dirMode, ""},
		"etc":                           {dirMode, ""},
		"lib":                           {dirMode, ""},
		"lib/modules":                   {dirMode, ""},
		mdir:                            {dirMode, ""},
		mdir + "/kernel":                {dirMode, ""},
		mdir + "/kernel/drivers":        {dirMode, ""},
		mdir + "/kernel/drivers/virtio": {dirMode, ""},
		mdir + "/kernel/drivers/block":  {dirMode, ""},
		mdir + "/kernel/drivers/virtio/virtio_ring.ko": {fileMode, "ring"},
		mdir + "/kernel/drivers/virtio/virtio.ko":      {fileMode, "virtio"},
		mdir + "/kernel/drivers/block/virtio_blk.ko":   {fileMode, "blk"},
		"etc/banger-init.json":                         {fileMode, `{"modules":["kernel/drivers/virtio/virtio_ring.ko","kernel/drivers/virtio/virtio.ko","kernel/drivers/block/virtio_blk.ko"]}` + "\n"},
	}
	if len(got) != len(want) {
		t.Errorf("Write: archive has %v, want %d entries", names, len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("Write: archive lacks %s", name)
			continue
		}
		if g.mode != w.mode || g.content != w.content || g.uid != 0 || g.mtime != 0 {
			t.Errorf("Write: %s = mode %o uid+gid %d mtime %d %q, want mode %o, root, epoch, %q", name, g.mode, g.uid, g.mtime, g.content, w.mode, w.content)
		}
	}
	var cfg initrd.Config
	if err := json.Unmarshal([]byte(got["etc/banger-init.json"].content), &cfg); err != nil {
		t.Fatal(err)
	}
	wantOrder := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko"}
	if !reflect.DeepEqual(cfg.Modules, wantOrder) {
		t.Errorf("Write: config modules = %v, want %v", cfg.Modules, wantOrder)
	}

	// Reproducible: the same inputs, even with new file times, give the same bytes.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(spec.Init, later, later); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := Write(&again, spec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("Write twice = different bytes, want identical output")
	}

	// Build writes the same bytes atomically.
	out := filepath.Join(dir, "initrd.img")
	if err := Build(out, spec); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, buf.Bytes()) {
		t.Errorf("Build wrote %d bytes (%v), want the %d bytes of Write", len(b), err, buf.Len())
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	initPath := filepath.Join(dir, "init")
	if err := os.WriteFile(initPath, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	mod := func(rel string) []kernel.Module {
		return []kernel.Module{{Name: "m", Path: initPath, RelPath: rel}}
	}
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"no init", Spec{KernelVersion: "6.1"}, "no init binary"},
		{"missing init", Spec{Init: filepath.Join(dir, "nope"), KernelVersion: "6.1"}, "no such file"},
		{"bad kernel version", Spec{Init: initPath, KernelVersion: "../x"}, "invalid kernel version"},
		{"empty relpath", Spec{Init: initPath, KernelVersion: "6.1", Modules: mod("")}, "invalid relative path"},
		{"escaping relpath", Spec{Init: initPath, KernelVersion: "6.1", Modules: mod("../../etc/passwd")}, "invalid relative path"},
		{"duplicate", Spec{Init: initPath, KernelVersion: "6.1", Modules: append(mod("a.ko"), mod("a.ko")...)}, "listed twice"},
	}
	for _, tt := range tests {
		err := Write(io.Discard, tt.spec)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Write(%s) = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestDefaultModules(t *testing.T) {
	got := DefaultModules()
	for _, want := range []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "vmw_vsock_virtio_transport", "ext4", "virtiofs"} {
		if !slices.Contains(got, want) {
			t.Errorf("DefaultModules() = %v, want it to contain %s", got, want)
		}
	}
}
