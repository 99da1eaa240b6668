package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/image/initramfs"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/runner"
)

// fakeKernel is an unpacked kernel package on disk.
type fakeKernel struct {
	root string
	pkg  kernel.Package
}

func newFakeKernel(t *testing.T, kver, vmlinuz string) *fakeKernel {
	t.Helper()
	root := t.TempDir()
	k := &fakeKernel{root: root, pkg: kernel.Package{
		Version:    kver,
		DebVersion: "1.0-1",
		Vmlinuz:    filepath.Join(root, "boot", "vmlinuz-"+kver),
		Config:     filepath.Join(root, "boot", "config-"+kver),
		ModulesDir: filepath.Join(root, "lib", "modules", kver),
	}}
	bundletest.WriteFile(t, k.pkg.Vmlinuz, vmlinuz)
	bundletest.WriteFile(t, k.pkg.Config, "CONFIG_EXT4_FS=y\n")
	bundletest.WriteFile(t, filepath.Join(k.pkg.ModulesDir, "modules.order"), "kernel/drivers/virtio/virtio_mmio.ko\n")
	bundletest.WriteFile(t, filepath.Join(k.pkg.ModulesDir, "kernel/drivers/virtio/virtio_mmio.ko"), "mmio module")
	bundletest.WriteFile(t, filepath.Join(k.pkg.ModulesDir, "kernel/drivers/block/virtio_blk.ko"), "blk module")
	// Debian's build link points outside the tree and must be left out.
	if err := os.Symlink("/usr/src/linux-headers-"+kver, filepath.Join(k.pkg.ModulesDir, "build")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("virtio/virtio_mmio.ko", filepath.Join(k.pkg.ModulesDir, "kernel/drivers/alias.ko")); err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeBuild records what the fake steps were asked to do.
type fakeBuild struct {
	kernel      *fakeKernel
	rootfsCalls atomic.Int32
	mu          sync.Mutex
	rootfsOpts  map[rootfs.Kind]rootfs.Options
	seedKeys    [][]byte
	failRootfs  error
	initrdSpec  initramfs.Spec
}

func (f *fakeBuild) steps() buildSteps {
	return buildSteps{
		fetchKernel: func(ctx context.Context, r runner.Runner, cacheDir string) (*kernel.Package, error) {
			p := f.kernel.pkg
			return &p, nil
		},
		extractVmlinux: func(src, dst string) error {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, append([]byte("ELF:"), b...), 0o644)
		},
		loadOrder: func(modulesDir string, names []string) ([]kernel.Module, error) {
			var mods []kernel.Module
			for _, n := range names {
				rel := "kernel/drivers/virtio/" + n + ".ko"
				mods = append(mods, kernel.Module{Name: n, Path: filepath.Join(modulesDir, rel), RelPath: rel})
			}
			return mods, nil
		},
		initrdModules: func() []string { return []string{"virtio_mmio"} },
		buildInitramfs: func(path string, s initramfs.Spec) error {
			f.mu.Lock()
			f.initrdSpec = s
			f.mu.Unlock()
			return os.WriteFile(path, []byte(fmt.Sprintf("initrd %s %d", s.KernelVersion, len(s.Modules))), 0o644)
		},
		buildRootfs: func(ctx context.Context, r runner.Runner, o rootfs.Options, out string) error {
			f.rootfsCalls.Add(1)
			f.mu.Lock()
			f.rootfsOpts[o.Kind] = o
			f.mu.Unlock()
			if f.failRootfs != nil {
				return f.failRootfs
			}
			// A sparse image: a little data, then a hole.
			fh, err := os.Create(out)
			if err != nil {
				return err
			}
			defer fh.Close()
			if _, err := fh.WriteString("rootfs " + string(o.Kind)); err != nil {
				return err
			}
			return fh.Truncate(4 << 20)
		},
		buildWorkSeed: func(ctx context.Context, r runner.Runner, key []byte, out string) error {
			f.mu.Lock()
			f.seedKeys = append(f.seedKeys, key)
			f.mu.Unlock()
			return os.WriteFile(out, append([]byte("seed:"), key...), 0o644)
		},
	}
}

func newFakeBuild(t *testing.T) *fakeBuild {
	return &fakeBuild{kernel: newFakeKernel(t, "6.1.0-99-cloud-amd64", "bzImage v1"), rootfsOpts: map[rootfs.Kind]rootfs.Options{}}
}

// testOptions returns Options with fake init and agent binaries.
func testOptions(t *testing.T, out string) Options {
	t.Helper()
	bin := t.TempDir()
	bundletest.WriteFile(t, filepath.Join(bin, "banger-init"), "init binary")
	bundletest.WriteFile(t, filepath.Join(bin, "banger-vsock-agent"), "agent binary")
	return Options{
		Out:      out,
		CacheDir: t.TempDir(),
		Init:     filepath.Join(bin, "banger-init"),
		Agent:    filepath.Join(bin, "banger-vsock-agent"),
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// buildFakeBundle builds a complete bundle with fake steps into a new directory.
func buildFakeBundle(t *testing.T) (dir string, f *fakeBuild) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "runtime")
	f = newFakeBuild(t)
	if err := build(context.Background(), runner.Default, testOptions(t, dir), f.steps()); err != nil {
		t.Fatalf("build: %v", err)
	}
	return dir, f
}

func TestBuild(t *testing.T) {
	dir, f := buildFakeBundle(t)
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(); err != nil {
		t.Fatalf("Verify() = %v, want nil", err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"kernel_version", b.KernelVersion, "6.1.0-99-cloud-amd64"},
		{"boot_args", b.BootArgs, bundle.DefaultBootArgs},
		{"default_image", b.DefaultImage, "docker"},
		{"images", b.ImageNames(), []string{"docker", "minimal"}},
		{"vmlinux", bundletest.ReadFile(t, b.Path(b.Kernel)), "ELF:bzImage v1"},
		{"vmlinuz", bundletest.ReadFile(t, b.Path(b.Vmlinuz)), "bzImage v1"},
		{"kernel.config", bundletest.ReadFile(t, b.Path(b.KernelConfig)), "CONFIG_EXT4_FS=y\n"},
		{"agent", bundletest.ReadFile(t, b.Path(b.Agent)), "agent binary"},
		{"initrd", bundletest.ReadFile(t, b.Path(b.Initrd)), "initrd 6.1.0-99-cloud-amd64 1"},
		{"module copied", bundletest.ReadFile(t, filepath.Join(dir, "modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko")), "blk module"},
		{"rootfs calls", f.rootfsCalls.Load(), int32(2)},
		{"docker gets modules", f.rootfsOpts[rootfs.KindDocker].Modules, filepath.Dir(f.kernel.pkg.ModulesDir)},
		{"minimal gets no modules", f.rootfsOpts[rootfs.KindMinimal].Modules, ""},
		{"initrd init", filepath.Base(f.initrdSpec.Init), "banger-init"},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "modules/6.1.0-99-cloud-amd64/build")); err == nil {
		t.Errorf("modules/<kver>/build was copied; want symlinks leaving the tree left out")
	}
	if target, err := os.Readlink(filepath.Join(dir, "modules/6.1.0-99-cloud-amd64/kernel/drivers/alias.ko")); err != nil || target != "virtio/virtio_mmio.ko" {
		t.Errorf("Readlink(alias.ko) = %q, %v, want virtio/virtio_mmio.ko", target, err)
	}
	fi, err := os.Stat(filepath.Join(dir, bundle.FileSSHKey))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("stat id_ed25519 = %v, %v, want mode 0600", fi, err)
	}
	pub := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileSSHKey+".pub"))
	if !strings.HasPrefix(pub, "ssh-ed25519 ") {
		t.Errorf("id_ed25519.pub = %q, want an ssh-ed25519 key", pub)
	}
	if seed := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileWorkSeed)); seed != "seed:"+pub {
		t.Errorf("work-seed = %q, want seed:%s", seed, pub)
	}
	for _, a := range b.Artifacts {
		if strings.HasPrefix(a.Path, bundle.FileSSHKey) {
			t.Errorf("artifact %s recorded, want the key pair left out", a.Path)
		}
	}
	var paths []string
	for _, a := range b.Artifacts {
		paths = append(paths, a.Path)
	}
	for _, want := range []string{"vmlinux", "vmlinuz", "kernel.config", "modules", "initrd.img", "rootfs-docker.ext4", "rootfs-minimal.ext4", "work-seed.ext4", "banger-vsock-agent"} {
		if !slices.Contains(paths, want) {
			t.Errorf("artifacts = %v, want one for %s", paths, want)
		}
	}
	if blocks := allocated(t, b.Path("rootfs-docker.ext4")); blocks >= 4<<20 {
		t.Errorf("rootfs-docker.ext4 allocates %d bytes, want it sparse", blocks)
	}
	bundletest.AssertNoTemps(t, dir)
}

func TestRebuildKeepsUnchangedOutputs(t *testing.T) {
	dir, f := buildFakeBundle(t)
	opts := testOptions(t, dir)
	// Same inputs as the first build: the fake agent has the same content.
	before := map[string]os.FileInfo{}
	for _, rel := range []string{"vmlinux", "vmlinuz", "initrd.img", "rootfs-docker.ext4", "work-seed.ext4", "banger-vsock-agent", bundle.FileSSHKey, "modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko"} {
		fi, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		before[rel] = fi
	}
	key := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileSSHKey))
	manifest := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileName))

	if err := build(context.Background(), runner.Default, opts, f.steps()); err != nil {
		t.Fatalf("second build: %v", err)
	}
	for rel, fi := range before {
		after, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(fi, after) {
			t.Errorf("%s was replaced by a rebuild with unchanged inputs, want it kept", rel)
		}
	}
	if got := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileSSHKey)); got != key {
		t.Errorf("rebuild changed id_ed25519, want the key kept")
	}
	if got := bundletest.ReadFile(t, filepath.Join(dir, bundle.FileName)); got != manifest {
		t.Errorf("rebuild changed bundle.json:\n%s\nwant\n%s", got, manifest)
	}

	// A new kernel version replaces the files and the modules tree.
	f.kernel = newFakeKernel(t, "6.1.0-100-cloud-amd64", "bzImage v2")
	if err := build(context.Background(), runner.Default, opts, f.steps()); err != nil {
		t.Fatalf("third build: %v", err)
	}
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(); err != nil {
		t.Errorf("Verify() after kernel change = %v, want nil", err)
	}
	if got := bundletest.ReadFile(t, b.Path(b.Kernel)); got != "ELF:bzImage v2" {
		t.Errorf("vmlinux = %q, want ELF:bzImage v2", got)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "modules"))
	if len(entries) != 1 || entries[0].Name() != "6.1.0-100-cloud-amd64" {
		t.Errorf("modules/ holds %v, want only 6.1.0-100-cloud-amd64", entries)
	}
	bundletest.AssertNoTemps(t, dir)
}

func TestBuildFailureLeavesNoLie(t *testing.T) {
	dir, f := buildFakeBundle(t)
	f.kernel = newFakeKernel(t, "6.1.0-99-cloud-amd64", "bzImage changed")
	f.failRootfs = errors.New("debootstrap exploded")
	err := build(context.Background(), runner.Default, testOptions(t, dir), f.steps())
	if err == nil || !strings.Contains(err.Error(), "debootstrap exploded") || !strings.Contains(err.Error(), "rootfs ") {
		t.Fatalf("build with failing rootfs = %v, want an error naming the rootfs stage", err)
	}
	// Either bundle.json is gone or it still describes the files exactly.
	if b, err := bundle.Load(dir); err == nil {
		if err := b.Verify(); err != nil {
			t.Errorf("bundle.json survived a failed build but Verify() = %v", err)
		}
	}
	bundletest.AssertNoTemps(t, dir)
}

func TestOptionsErrors(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Options)
		want   string
	}{
		{"no out", func(o *Options) { o.Out = "" }, "no output directory"},
		{"no init", func(o *Options) { o.Init = "" }, "no banger-init binary given"},
		{"missing agent", func(o *Options) { o.Agent = "/nonexistent/agent" }, "go build ./cmd/banger-vsock-agent"},
		{"unknown image", func(o *Options) { o.Images = []rootfs.Kind{"alpine"} }, `unknown image "alpine"`},
	}
	for _, tt := range tests {
		opts := testOptions(t, filepath.Join(t.TempDir(), "out"))
		tt.modify(&opts)
		err := build(context.Background(), runner.Default, opts, newFakeBuild(t).steps())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("build(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestBuildOneImage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "runtime")
	f := newFakeBuild(t)
	opts := testOptions(t, dir)
	opts.Images = []rootfs.Kind{rootfs.KindMinimal, rootfs.KindMinimal}
	if err := build(context.Background(), runner.Default, opts, f.steps()); err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%v %v %v", b.ImageNames(), b.DefaultImage, f.rootfsCalls.Load()); got != "[minimal] minimal 1" {
		t.Errorf("images, default, rootfs builds = %s, want [minimal] minimal 1", got)
	}
}

func TestBuildLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "runtime")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := bundle.LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	err = build(context.Background(), runner.Default, testOptions(t, dir), newFakeBuild(t).steps())
	if err == nil || !strings.Contains(err.Error(), "another banger runtime build") {
		t.Errorf("build while locked = %v, want a lock error", err)
	}
}

// allocated is the disk space a file takes, in bytes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestSparseCopy(t *testing.T) {
	data := append(bytes.Repeat([]byte{0}, 3<<20), []byte("tail")...)
	data = append(data, bytes.Repeat([]byte{0}, 2<<20)...)
	dst := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	n, err := bundle.SparseCopy(f, bytes.NewReader(data))
	f.Close()
	if err != nil || n != int64(len(data)) {
		t.Fatalf("bundle.SparseCopy = %d, %v, want %d, nil", n, err, len(data))
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Errorf("bundle.SparseCopy wrote different content")
	}
	if a := allocated(t, dst); a > 2<<20 {
		t.Errorf("sparse copy allocates %d bytes, want at most 2 MiB", a)
	}
}

func TestSafeLinkTarget(t *testing.T) {
	tests := []struct {
		target string
		want   bool
	}{
		{"a.ko", true},
		{"virtio/a.ko", true},
		{"./a", true},
		{"", false},
		{"/usr/src/linux", false},
		{"../a", false},
		{"a/../../b", false},
		{"a/../b", false},
	}
	for _, tt := range tests {
		if got := bundle.SafeLinkTarget(tt.target); got != tt.want {
			t.Errorf("bundle.SafeLinkTarget(%q) = %v, want %v", tt.target, got, tt.want)
		}
	}
}

func TestSumCache(t *testing.T) {
	dir := t.TempDir()
	bundletest.WriteFile(t, filepath.Join(dir, "img"), "image v1")
	sum, err := bundle.HashPath(filepath.Join(dir, "img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.SaveSumCache(dir, map[string]bundle.FileSum{"img": sum, "gone": sum}); err != nil {
		t.Fatal(err)
	}
	cache := bundle.LoadSumCache(dir)
	if got, ok := bundle.CachedSum(cache, dir, "img"); !ok || got != sum {
		t.Errorf("bundle.CachedSum(img) = %v, %v, want %v, true", got, ok, sum)
	}
	if _, ok := bundle.CachedSum(cache, dir, "gone"); ok {
		t.Errorf("bundle.CachedSum(gone) = _, true, want false for a missing file")
	}
	bundletest.WriteFile(t, filepath.Join(dir, "img"), "image v2") // same size, new content
	if _, ok := bundle.CachedSum(cache, dir, "img"); ok {
		t.Errorf("bundle.CachedSum(img) after a rewrite = _, true, want false")
	}
}

func TestSameData(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, dataAt int64, data string, size int64) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(data), dataAt); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := mk("a", 8<<20, "hello", 32<<20)
	tests := []struct {
		name string
		b    string
		want bool
	}{
		{"same layout", mk("b", 8<<20, "hello", 32<<20), true},
		{"other data", mk("c", 8<<20, "hellO", 32<<20), false},
		{"other offset", mk("d", 9<<20, "hello", 32<<20), false},
		{"other size", mk("e", 8<<20, "hello", 33<<20), false},
		{"written zeros", func() string {
			p := mk("f", 8<<20, "hello", 32<<20)
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt(make([]byte, 1<<20), 20<<20) // data extent of zeros
			f.Close()
			return p
		}(), true},
	}
	for _, tt := range tests {
		if got := bundle.SameData(a, tt.b); got != tt.want {
			t.Errorf("bundle.SameData(a, %s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
