// Package rootfs builds banger's guest root images with debootstrap and mkfs.ext4 -d, and the per-VM work-seed disk.
package rootfs

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/runner"
)

// Kind names an image flavour.
type Kind string

// Image kinds.
const (
	// KindDocker is the default image: systemd, sshd, docker and developer tools.
	KindDocker Kind = "docker"
	// KindMinimal is sshd plus the agent, with the agent as PID 1.
	KindMinimal Kind = "minimal"
)

// DefaultMirror is the Debian mirror used when Options.Mirror is empty.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultSuite is the Debian suite used when Options.Suite is empty.
const DefaultSuite = "bookworm"

// AgentPath is where the guest agent is installed inside the images.
const AgentPath = "/usr/local/bin/banger-vsock-agent"

// recipeVersion changes whenever the debootstrap invocation changes in a way
// the other key fields do not capture; bumping it invalidates cached trees.
const recipeVersion = "1"

// customizationVersion changes whenever what customize does changes in a
// way overlayKey (the files and links it writes) does not capture; bumping
// it invalidates cached images but keeps the debootstrap trees.
const customizationVersion = "3"

const variant = "minbase"

// Options describes one image build.
type Options struct {
	// Kind is the image flavour.
	Kind Kind
	// Agent is the path of the static banger-vsock-agent binary to install.
	Agent string
	// Mirror is the Debian mirror; default DefaultMirror.
	Mirror string
	// Suite is the Debian suite; default DefaultSuite.
	Suite string
	// CacheDir holds the finished images and the npm tools' binaries
	// (npm/), e.g. ~/.cache/banger; for root also the debootstrap trees.
	CacheDir string
	// TreeDir holds what must be root's: the debootstrap trees and the
	// staging copies of them. Default: CacheDir for root, DefaultTreeDir
	// for an ordinary user, so that nothing in their home is root's.
	TreeDir string
	// Size is the mkfs.ext4 size; default "4G" for docker, "1G" for minimal.
	Size string
	// Modules optionally names a directory whose <kernel-version>
	// subdirectories are installed under /lib/modules (docker needs overlay,
	// bridge, veth and netfilter modules that the cloud kernel builds as modules).
	Modules string
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

func (o *Options) defaults() error {
	switch o.Kind {
	case KindDocker, KindMinimal:
	case "":
		o.Kind = KindDocker
	default:
		return fmt.Errorf("building rootfs: unknown image kind %q: use %q or %q", o.Kind, KindDocker, KindMinimal)
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Size == "" {
		o.Size = "4G"
		if o.Kind == KindMinimal {
			o.Size = "1G"
		}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.CacheDir == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return err
		}
		o.CacheDir = dir
	}
	if o.TreeDir == "" {
		o.TreeDir = o.CacheDir
		if !runner.IsRoot() {
			o.TreeDir = DefaultTreeDir
		}
	}
	if o.Agent == "" {
		return errors.New("building rootfs: no agent binary given: build cmd/banger-vsock-agent with CGO_ENABLED=0 and pass its path")
	}
	return nil
}

// DefaultTreeDir holds the root-owned debootstrap trees of ordinary users'
// builds: they are shared, keyed by recipe, and only root can change them.
const DefaultTreeDir = "/var/cache/banger"

// DefaultCacheDir is ${XDG_CACHE_HOME:-$HOME/.cache}/banger.
func DefaultCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding cache directory: %w: set XDG_CACHE_HOME or HOME", err)
	}
	return filepath.Join(dir, "banger"), nil
}

// Packages returns the packages debootstrap includes for kind, sorted.
func Packages(kind Kind) []string {
	var p []string
	switch kind {
	case KindMinimal:
		p = []string{"openssh-server", "iproute2", "ca-certificates"}
	default:
		p = []string{
			"systemd-sysv", "udev", "kmod", "openssh-server", "docker.io", "iptables",
			"tmux", "git", "curl", "ca-certificates", "iproute2", "e2fsprogs",
			"procps", "less",
			// rsync on both ends: 'rsync -a' through banger ssh-config.
			"rsync",
			// docker applies its AppArmor profile when the kernel has
			// AppArmor (Debian's does), which needs apparmor_parser.
			"apparmor",
		}
	}
	sort.Strings(p)
	return p
}

// recipeKey identifies a debootstrap tree.
func recipeKey(o Options) string {
	h := sha256.New()
	fmt.Fprintf(h, "suite=%s\nmirror=%s\nvariant=%s\ninclude=%s\nrecipe=%s\n",
		o.Suite, o.Mirror, variant, strings.Join(Packages(o.Kind), ","), recipeVersion)
	return hex.EncodeToString(h.Sum(nil))
}

// Build writes the image of opts.Kind to out, reusing cached debootstrap
// trees and finished images under opts.CacheDir.
func Build(ctx context.Context, r runner.Runner, opts Options, out string) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	log := opts.Log.With("kind", string(opts.Kind))
	removeStale(ctx, r, opts.CacheDir)
	if opts.TreeDir != opts.CacheDir {
		removeStale(ctx, r, opts.TreeDir)
	}
	agentSum, err := fileSHA256(opts.Agent)
	if err != nil {
		return fmt.Errorf("building rootfs: hashing agent: %w", err)
	}
	modSum := ""
	if opts.Modules != "" {
		if modSum, err = treeSHA256(opts.Modules); err != nil {
			return fmt.Errorf("building rootfs: hashing modules: %w", err)
		}
	}
	rkey := recipeKey(opts)
	ih := sha256.New()
	fmt.Fprintf(ih, "recipe=%s\nkind=%s\nagent=%s\ncustomization=%s\nsize=%s\nmodules=%s\noverlay=%s\n",
		rkey, opts.Kind, agentSum, customizationVersion, opts.Size, modSum, overlayKey(opts.Kind))
	if tools := toolsFor(opts.Kind); len(tools) > 0 {
		fmt.Fprintf(ih, "tools=%s\n", toolsKey(tools))
	}
	imgName := fmt.Sprintf("%s-%s.ext4", opts.Kind, hex.EncodeToString(ih.Sum(nil))[:24])
	imgDir := filepath.Join(opts.CacheDir, "images")
	cached := filepath.Join(imgDir, imgName)

	if _, err := os.Stat(cached); err == nil {
		log.Info("rootfs image cache hit", "image", cached)
		now := time.Now()
		os.Chtimes(cached, now, now) // most recently used: spared by pruneImages
		return copySparse(ctx, r, cached, out)
	}

	tree, err := debootstrap(ctx, r, opts, rkey, log)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return fmt.Errorf("building rootfs: creating image cache: %w", err)
	}
	staging, err := makeTreeDir(ctx, r, opts.TreeDir, "staging-")
	if err != nil {
		return fmt.Errorf("building rootfs: creating staging directory: %w", err)
	}
	defer removePrivileged(context.WithoutCancel(ctx), r, staging)

	start := time.Now()
	if _, err := r.RunPrivileged(ctx, "cp", "-a", "--reflink=auto", tree+"/.", staging+"/"); err != nil {
		return fmt.Errorf("building rootfs: copying debootstrap tree: %w", err)
	}
	log.Info("copied debootstrap tree", "took", time.Since(start).Round(time.Millisecond))
	if err := customize(ctx, r, opts, staging); err != nil {
		return err
	}

	tmpImg := filepath.Join(imgDir, "."+imgName+".tmp")
	start = time.Now()
	if err := ext4.Make(ctx, r, staging, "rootfs", tmpImg, opts.Size, true); err != nil {
		os.Remove(tmpImg)
		return fmt.Errorf("building rootfs: %w", err)
	}
	if err := os.Rename(tmpImg, cached); err != nil {
		os.Remove(tmpImg)
		return fmt.Errorf("building rootfs: storing image in cache: %w", err)
	}
	log.Info("made rootfs image", "image", cached, "took", time.Since(start).Round(time.Millisecond))
	pruneImages(imgDir, opts.Kind, imgName, log)
	return copySparse(ctx, r, cached, out)
}

// debootstrap returns the cached tree for the recipe, building it first if needed.
func debootstrap(ctx context.Context, r runner.Runner, o Options, key string, log *slog.Logger) (string, error) {
	base := filepath.Join(o.TreeDir, "debootstrap")
	tree := filepath.Join(base, key)
	if fi, err := os.Stat(tree); err == nil && fi.IsDir() {
		log.Info("debootstrap cache hit", "tree", tree)
		now := time.Now()
		os.Chtimes(tree, now, now) // spared by removeStale (root only: the tree is root's)
		return tree, nil
	}
	if err := ensureTreeDir(ctx, r, base); err != nil {
		return "", fmt.Errorf("creating debootstrap cache %s: %w", base, err)
	}
	tmp, err := makeTreeDir(ctx, r, base, "."+key[:12]+".tmp-")
	if err != nil {
		return "", fmt.Errorf("creating debootstrap directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			removePrivileged(context.WithoutCancel(ctx), r, tmp)
		}
	}()
	if _, err := findTool("debootstrap"); err != nil {
		return "", err
	}
	start := time.Now()
	log.Info("running debootstrap", "suite", o.Suite, "mirror", o.Mirror, "packages", Packages(o.Kind))
	args := []string{
		"--variant=" + variant,
		"--include=" + strings.Join(Packages(o.Kind), ","),
		o.Suite, tmp, o.Mirror,
	}
	if _, err := r.RunPrivileged(ctx, "debootstrap", args...); err != nil {
		return "", fmt.Errorf("debootstrapping %s into %s: %w", o.Suite, tmp, err)
	}
	// apt's downloaded .debs are not needed in the image.
	if _, err := r.RunPrivileged(ctx, "find", filepath.Join(tmp, "var/cache/apt/archives"), "-name", "*.deb", "-delete"); err != nil {
		return "", fmt.Errorf("cleaning debootstrap apt cache: %w", err)
	}
	if err := renameTree(ctx, r, tmp, tree); err != nil {
		if fi, serr := os.Stat(tree); serr == nil && fi.IsDir() {
			log.Info("another build stored the same debootstrap tree first; using it", "tree", tree)
			return tree, nil // the deferred cleanup removes ours
		}
		return "", fmt.Errorf("storing debootstrap tree: %w", err)
	}
	ok = true
	log.Info("debootstrap done", "tree", tree, "took", time.Since(start).Round(time.Second))
	return tree, nil
}

// ensureTreeDir makes dir (0755), through sudo when the caller is not root.
func ensureTreeDir(ctx context.Context, r runner.Runner, dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if runner.IsRoot() {
		return os.MkdirAll(dir, 0o755)
	}
	_, err := r.RunPrivileged(ctx, "mkdir", "-p", "-m", "0755", dir)
	return err
}

// makeTreeDir makes a new, uniquely named directory under parent (created
// if needed) for a root-owned tree, through sudo when the caller is not root.
func makeTreeDir(ctx context.Context, r runner.Runner, parent, prefix string) (string, error) {
	if err := ensureTreeDir(ctx, r, parent); err != nil {
		return "", err
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	dir := filepath.Join(parent, prefix+hex.EncodeToString(b))
	if runner.IsRoot() {
		return dir, os.Mkdir(dir, 0o755)
	}
	_, err := r.RunPrivileged(ctx, "mkdir", "-m", "0755", dir)
	return dir, err
}

// renameTree moves a finished tree into place, through sudo when the
// caller is not root (the parent is root's).
func renameTree(ctx context.Context, r runner.Runner, from, to string) error {
	if runner.IsRoot() {
		return os.Rename(from, to)
	}
	if _, err := os.Stat(to); err == nil {
		return os.ErrExist
	}
	_, err := r.RunPrivileged(ctx, "mv", "-T", "--", from, to)
	return err
}

// findTool returns the path of a host tool, with an error saying how to get it.
func findTool(tool string) (string, error) {
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, tool)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	pkg := map[string]string{"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "depmod": "kmod"}[tool]
	return "", fmt.Errorf("finding %s: not installed: run 'apt-get install %s'", tool, pkg)
}

// copySparse copies a cached image to out keeping holes (or sharing extents).
func copySparse(ctx context.Context, r runner.Runner, src, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("copying image to %s: %w", out, err)
	}
	tmp := out + ".tmp"
	if _, err := r.Run(ctx, "cp", "--sparse=always", "--reflink=auto", src, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copying image to %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copying image to %s: %w", out, err)
	}
	return nil
}

// keepImages is how many cached images of one kind survive a prune.
const keepImages = 2

// pruneImages removes cached images of kind beyond the keepImages most
// recently used, sparing keep and anything used in the last ten minutes
// (another build may be about to copy it).
func pruneImages(dir string, kind Kind, keep string, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type img struct {
		name string
		mod  time.Time
	}
	var imgs []img
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, string(kind)+"-") || !strings.HasSuffix(n, ".ext4") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			imgs = append(imgs, img{n, fi.ModTime()})
		}
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].mod.After(imgs[j].mod) })
	for i, im := range imgs {
		if i < keepImages || im.name == keep || time.Since(im.mod) < 10*time.Minute {
			continue
		}
		if err := os.Remove(filepath.Join(dir, im.name)); err == nil {
			log.Info("pruned old cached image", "image", im.name)
		}
	}
}

// staleAfter is the age at which a build's leftovers (from a crash or a
// kill) are certainly not in use by another build.
const staleAfter = 6 * time.Hour

// unusedTreeAge is the age at which an unused debootstrap tree (from an
// older recipe) is deleted.
const unusedTreeAge = 30 * 24 * time.Hour

// removeStale deletes leftovers of builds that died (staging and overlay
// directories, half-made debootstrap trees, images and npm fetches) and
// debootstrap trees unused for unusedTreeAge.
func removeStale(ctx context.Context, r runner.Runner, cacheDir string) {
	trees, _ := filepath.Glob(filepath.Join(cacheDir, "debootstrap", "[0-9a-f]*"))
	for _, p := range trees {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() && time.Since(fi.ModTime()) > unusedTreeAge {
			removePrivileged(ctx, r, p)
		}
	}
	var paths []string
	for _, pat := range []string{"staging-*", "overlay-*", "debootstrap/.*.tmp-*", "images/.*.tmp", "npm/.tmp-*"} {
		m, _ := filepath.Glob(filepath.Join(cacheDir, pat))
		paths = append(paths, m...)
	}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil || time.Since(fi.ModTime()) < staleAfter {
			continue
		}
		if fi.IsDir() {
			removePrivileged(ctx, r, p)
		} else {
			os.Remove(p)
		}
	}
}

// removePrivileged deletes a build directory, first unmounting anything a
// crashed debootstrap left mounted inside it. It refuses to delete a tree
// that still has mounts, so that a bind-mounted host /dev is never emptied.
func removePrivileged(ctx context.Context, r runner.Runner, dir string) {
	for _, m := range mountsUnder(dir) {
		if _, err := r.RunPrivileged(ctx, "umount", "-l", m); err != nil {
			slog.Warn("unmounting leftover mount", "mount", m, "err", err)
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		slog.Error("not removing build directory: it still has mounts", "dir", dir, "mounts", left)
		return
	}
	if _, err := r.RunPrivileged(ctx, "rm", "-rf", "--one-file-system", dir); err != nil {
		slog.Warn("removing build directory", "dir", dir, "err", err)
	}
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			ms = append(ms, mp)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	return ms
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// treeSHA256 hashes the names, modes, link targets and contents of a tree.
func treeSHA256(root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o\n", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %s\n", t)
		case info.Mode().IsRegular():
			s, err := fileSHA256(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "= %s\n", s)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
