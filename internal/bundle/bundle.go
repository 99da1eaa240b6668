// Package bundle is the runtime bundle's format (bundle.json and its artifacts), its discovery, and the file helpers its build and dist share.
package bundle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/atomicfile"
)

// Schema is the bundle.json schema version this package reads and writes.
const Schema = 1

// FileName is the manifest file at the top of every bundle directory.
const FileName = "bundle.json"

// DefaultBootArgs is the kernel command line every bundle starts from; the
// daemon appends root=, ip= and backend additions.
const DefaultBootArgs = "console=ttyS0 reboot=k panic=1 pci=off"

// Standard file names inside a bundle directory.
const (
	FileKernel       = "vmlinux"
	FileVmlinuz      = "vmlinuz"
	FileKernelConfig = "kernel.config"
	DirModules       = "modules"
	FileInitrd       = "initrd.img"
	FileSSHKey       = "id_ed25519"
	FileAgent        = "banger-vsock-agent"
	FileFirecracker  = "firecracker"
	FileWorkSeed     = "work-seed.ext4"
)

// RootfsFile is the bundle file name of the image called name.
func RootfsFile(name string) string { return "rootfs-" + name + ".ext4" }

// Bundle is a runtime bundle: the parsed bundle.json plus the directory holding it.
type Bundle struct {
	Schema        int        `json:"schema"`
	KernelVersion string     `json:"kernel_version"`
	Kernel        string     `json:"kernel"`
	Vmlinuz       string     `json:"vmlinuz"`
	KernelConfig  string     `json:"kernel_config"`
	Modules       string     `json:"modules"`
	Initrd        string     `json:"initrd"`
	BootArgs      string     `json:"boot_args"`
	SSHKey        string     `json:"ssh_key"`
	Agent         string     `json:"agent"`
	Firecracker   string     `json:"firecracker"`
	DefaultImage  string     `json:"default_image"`
	Images        []Image    `json:"images"`
	Artifacts     []Artifact `json:"artifacts"`

	dir string
}

// Image is a guest image of the bundle.
type Image struct {
	Name        string `json:"name"`
	Rootfs      string `json:"rootfs"`
	WorkSeed    string `json:"work_seed"`
	Description string `json:"description,omitempty"`
}

// Artifact records the expected content of one bundle path. A path naming a
// directory (the modules tree) is hashed as a tree: see TreeHash.
type Artifact struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Load reads dir/bundle.json.
func Load(dir string) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("loading runtime bundle %s: %w", dir, err)
	}
	data, err := os.ReadFile(filepath.Join(abs, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("loading runtime bundle %s: no %s there: run `make runtime-bundle` (or `banger runtime install`) to create it", abs, FileName)
	}
	if err != nil {
		return nil, fmt.Errorf("loading runtime bundle %s: %w", abs, err)
	}
	var b Bundle
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("loading runtime bundle %s: parsing %s: %w: rebuild it with `make runtime-bundle`", abs, FileName, err)
	}
	if b.Schema != Schema {
		return nil, fmt.Errorf("loading runtime bundle %s: schema %d, this banger reads schema %d: rebuild it with `make runtime-bundle`", abs, b.Schema, Schema)
	}
	for i, im := range b.Images {
		if im.Name == "" {
			return nil, fmt.Errorf("loading runtime bundle %s: image %d in %s has no name: rebuild it with `make runtime-bundle`", abs, i+1, FileName)
		}
	}
	for _, rel := range b.referenced() {
		if err := checkRel(rel); err != nil {
			return nil, fmt.Errorf("loading runtime bundle %s: %w", abs, err)
		}
	}
	for _, a := range b.Artifacts {
		if err := checkRel(a.Path); err != nil {
			return nil, fmt.Errorf("loading runtime bundle %s: %w", abs, err)
		}
	}
	b.dir = abs
	return &b, nil
}

// checkRel rejects paths that would leave the bundle directory.
func checkRel(rel string) error {
	if rel == "" {
		return nil
	}
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return fmt.Errorf("path %q leaves the bundle directory", rel)
	}
	return nil
}

// Dir is the absolute directory holding the bundle.
func (b *Bundle) Dir() string { return b.dir }

// Path is the absolute path of rel inside the bundle, or "" when rel is empty.
func (b *Bundle) Path(rel string) string {
	if rel == "" {
		return ""
	}
	return filepath.Join(b.dir, rel)
}

// ImageNames lists the bundle's image names in order.
func (b *Bundle) ImageNames() []string {
	names := make([]string, 0, len(b.Images))
	for _, im := range b.Images {
		names = append(names, im.Name)
	}
	return names
}

// Image returns the image called name, or the default image when name is empty.
func (b *Bundle) Image(name string) (*Image, error) {
	if name == "" {
		name = b.DefaultImage
	}
	for i := range b.Images {
		if b.Images[i].Name == name {
			return &b.Images[i], nil
		}
	}
	return nil, fmt.Errorf("finding image %q in runtime bundle %s: no such image: use one of %s", name, b.dir, strings.Join(b.ImageNames(), ", "))
}

// referenced lists every file the bundle's fields name, without duplicates.
func (b *Bundle) referenced() []string {
	var refs []string
	add := func(p string) {
		if p != "" && !slices.Contains(refs, p) {
			refs = append(refs, p)
		}
	}
	add(b.Kernel)
	add(b.Vmlinuz)
	add(b.KernelConfig)
	add(b.Modules)
	add(b.Initrd)
	add(b.SSHKey)
	add(b.Agent)
	add(b.Firecracker)
	for _, im := range b.Images {
		add(im.Rootfs)
		add(im.WorkSeed)
	}
	return refs
}

// Check reports missing files and artifacts whose size differs from the record.
// It reads no file contents, so it is fast enough to run before every use.
func (b *Bundle) Check() error {
	var errs []error
	for _, rel := range b.referenced() {
		if _, err := os.Stat(b.Path(rel)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rel, err))
		}
	}
	if b.Kernel == "" {
		errs = append(errs, errors.New("no kernel recorded"))
	}
	if len(b.Images) == 0 {
		errs = append(errs, errors.New("no images recorded"))
	}
	for _, a := range b.Artifacts {
		size, err := pathSize(b.Path(a.Path))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Path, err))
			continue
		}
		if size != a.Size {
			errs = append(errs, fmt.Errorf("%s: size is %d, %s says %d", a.Path, size, FileName, a.Size))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("checking runtime bundle %s: %w: rebuild it with `make runtime-bundle`", b.dir, errList(errs))
	}
	return nil
}

// Verify runs Check and then compares every artifact's sha256 with the record.
func (b *Bundle) Verify() error {
	if err := b.Check(); err != nil {
		return err
	}
	paths := make([]string, len(b.Artifacts))
	for i, a := range b.Artifacts {
		paths[i] = b.Path(a.Path)
	}
	sums, err := HashAll(paths)
	if err != nil {
		return fmt.Errorf("verifying runtime bundle %s: %w", b.dir, err)
	}
	var errs []error
	for i, a := range b.Artifacts {
		if sums[i].SHA256 != a.SHA256 {
			errs = append(errs, fmt.Errorf("%s: sha256 is %s, %s says %s", a.Path, sums[i].SHA256, FileName, a.SHA256))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("verifying runtime bundle %s: %w: rebuild it with `make runtime-bundle` or reinstall it", b.dir, errList(errs))
	}
	return nil
}

// errList is several errors on one line, separated by "; ".
type errList []error

func (l errList) Error() string {
	msgs := make([]string, len(l))
	for i, err := range l {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (l errList) Unwrap() []error { return l }

// Save writes the bundle's bundle.json atomically into its directory.
func (b *Bundle) Save() error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", FileName, err)
	}
	if err := atomicfile.Write(filepath.Join(b.dir, FileName), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", FileName, err)
	}
	return nil
}

// artifact returns a pointer to the artifact entry for rel, or nil.
func (b *Bundle) artifact(rel string) *Artifact {
	for i := range b.Artifacts {
		if b.Artifacts[i].Path == rel {
			return &b.Artifacts[i]
		}
	}
	return nil
}

// SetArtifact records sum for rel, replacing an earlier entry.
func (b *Bundle) SetArtifact(rel string, sum FileSum) {
	if a := b.artifact(rel); a != nil {
		a.SHA256, a.Size = sum.SHA256, sum.Size
		return
	}
	b.Artifacts = append(b.Artifacts, Artifact{Path: rel, SHA256: sum.SHA256, Size: sum.Size})
}

// SetDir sets the directory a bundle being built lives in.
func (b *Bundle) SetDir(dir string) { b.dir = dir }

// ArtifactPaths lists the bundle paths that get artifact entries: everything
// referenced except the SSH key pair, which is per installation.
func (b *Bundle) ArtifactPaths() []string {
	var paths []string
	for _, p := range b.referenced() {
		if p != b.SSHKey {
			paths = append(paths, p)
		}
	}
	return paths
}

// FillArtifacts sets Artifacts from known sums, hashing the rest concurrently.
func (b *Bundle) FillArtifacts(known map[string]FileSum) error {
	paths := b.ArtifactPaths()
	var todo []string
	for _, p := range paths {
		if _, ok := known[p]; !ok {
			todo = append(todo, b.Path(p))
		}
	}
	sums, err := HashAll(todo)
	if err != nil {
		return err
	}
	b.Artifacts = nil
	for _, p := range paths {
		sum, ok := known[p]
		if !ok {
			sum, sums = sums[0], sums[1:]
		}
		b.Artifacts = append(b.Artifacts, Artifact{Path: p, SHA256: sum.SHA256, Size: sum.Size})
	}
	return nil
}

// lockDir takes an exclusive lock on a hidden file beside dir, so that two
// builds or installs of the same bundle cannot interleave (the lock survives

// Install renaming dir); the returned func releases it.
func LockDir(dir string) (func(), error) {
	path := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w: another banger runtime build or install is using it; wait for it to finish", dir, err)
	}
	return func() { f.Close() }, nil
}
