// Package dist packs a runtime bundle into an archive with a manifest, and installs one from a manifest, checked and atomic.
package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/runner"
)

// ManifestFile is the name Dist gives the manifest it writes.
const ManifestFile = "runtime-bundle.toml"

// templateMarker appears in every placeholder value of the checked-in template.
const templateMarker = "REPLACE-ME"

// Manifest describes a prebuilt bundle archive (runtime-bundle.toml).
type Manifest struct {
	Bundle ManifestBundle `toml:"bundle"`
}

// ManifestBundle is the [bundle] table of a manifest.
type ManifestBundle struct {
	// Archive is a .tar.gz path (relative to the manifest's directory) or an https URL.
	Archive string `toml:"archive"`
	// SHA256 is the archive's sha256, hex.
	SHA256 string `toml:"sha256"`
	// Version labels the bundle, usually its kernel version.
	Version string `toml:"version"`
	// Firecracker optionally names a firecracker binary inside the archive.
	Firecracker string `toml:"firecracker,omitempty"`
}

var hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ReadManifest reads and validates a manifest. The checked-in template is refused.
func ReadManifest(path string) (*Manifest, error) {
	var m Manifest
	md, err := toml.DecodeFile(path, &m)
	if err != nil {
		return nil, fmt.Errorf("reading runtime manifest %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("reading runtime manifest %s: unknown key %q: remove it or check its spelling", path, und[0].String())
	}
	b := m.Bundle
	for _, v := range []string{b.Archive, b.SHA256, b.Version, b.Firecracker} {
		if strings.Contains(v, templateMarker) {
			return nil, fmt.Errorf("reading runtime manifest %s: this is the template, with placeholder values: make a real manifest with `banger runtime dist` (or `make runtime-dist`) and pass that one", path)
		}
	}
	if b.Archive == "" {
		return nil, fmt.Errorf("reading runtime manifest %s: [bundle] archive is empty: set it to the .tar.gz path or https URL", path)
	}
	if !hexSHA256.MatchString(b.SHA256) {
		return nil, fmt.Errorf("reading runtime manifest %s: [bundle] sha256 %q is not 64 lowercase hex digits: set it to the archive's sha256sum", path, b.SHA256)
	}
	if b.Firecracker != "" && !filepath.IsLocal(b.Firecracker) {
		return nil, fmt.Errorf("reading runtime manifest %s: [bundle] firecracker %q is not a relative path inside the archive", path, b.Firecracker)
	}
	return &m, nil
}

// installer holds Install's replaceable parts.
type installer struct {
	client *http.Client
	// workSeed rebuilds a work-seed image for a new SSH key.
	workSeed func(ctx context.Context, authorizedKey []byte, out string) error
	log      *slog.Logger
}

func defaultInstaller() *installer {
	return &installer{
		client: http.DefaultClient,
		workSeed: func(ctx context.Context, key []byte, out string) error {
			return workseed.Build(ctx, runner.Default, key, out)
		},
		log: slog.Default(),
	}
}

// Install installs the prebuilt bundle that the manifest at manifestPath
// describes into out. The archive's sha256 is checked while it is fetched, it
// is unpacked next to out and verified, and only then swapped in, so a failure
// leaves out as it was. Archives carry no SSH key: the key of the bundle being
// replaced is kept, else a new pair is generated, and the work-seed is rebuilt
// for it.
func Install(ctx context.Context, manifestPath, out string) error {
	return defaultInstaller().install(ctx, manifestPath, out)
}

func (in *installer) install(ctx context.Context, manifestPath, out string) (err error) {
	start := time.Now()
	m, err := ReadManifest(manifestPath)
	if err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return fmt.Errorf("installing runtime bundle to %s: %w", out, err)
	}
	fail := func(err error) error {
		return fmt.Errorf("installing runtime bundle %s to %s: %w", m.Bundle.Archive, out, err)
	}
	parent, base := filepath.Dir(out), filepath.Base(out)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fail(err)
	}
	unlock, err := bundle.LockDir(out)
	if err != nil {
		return err
	}
	defer unlock()

	archive, err := in.fetch(ctx, m, filepath.Dir(manifestPath), filepath.Join(parent, "."+base+".tar.gz"))
	if err != nil {
		return fail(err)
	}
	defer os.Remove(archive)

	stage, err := os.MkdirTemp(parent, "."+base+".install.tmp-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(stage)
	if err := extractTarGz(archive, stage); err != nil {
		return fail(fmt.Errorf("unpacking archive %s: %w: fetch it again or check the manifest", m.Bundle.Archive, err))
	}
	root, err := bundleRoot(stage)
	if err != nil {
		return fail(fmt.Errorf("archive %s: %w", m.Bundle.Archive, err))
	}
	bun, err := bundle.Load(root)
	if err != nil {
		return fail(err)
	}
	if err := in.personalize(ctx, bun, m, stage, out); err != nil {
		return fail(err)
	}
	if err := bun.Verify(); err != nil {
		return fail(err)
	}
	if err := swapDir(root, out); err != nil {
		return fail(err)
	}
	in.log.Info("runtime bundle installed", "dir", out, "version", m.Bundle.Version,
		"kernel", bun.KernelVersion, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// fetch copies the archive to tmpl (a temporary name) while hashing it and
// returns the copy's path once its sha256 matches the manifest.
func (in *installer) fetch(ctx context.Context, m *Manifest, manifestDir, tmpl string) (path string, err error) {
	src := m.Bundle.Archive
	var r io.Reader
	if u, perr := url.Parse(src); perr == nil && (u.Scheme == "https" || u.Scheme == "http") {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return "", fmt.Errorf("fetching archive %s: %w", src, err)
		}
		resp, err := in.client.Do(req)
		if err != nil {
			return "", fmt.Errorf("fetching archive %s: %w", src, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("fetching archive %s: %s: check the manifest's archive URL", src, resp.Status)
		}
		r = resp.Body
	} else {
		if !filepath.IsAbs(src) {
			src = filepath.Join(manifestDir, src)
		}
		f, err := os.Open(src)
		if err != nil {
			return "", fmt.Errorf("opening archive: %w: check the manifest's archive path (relative paths start at the manifest's directory)", err)
		}
		defer f.Close()
		r = f
	}
	tmp, err := bundle.TempPath(tmpl)
	if err != nil {
		return "", fmt.Errorf("fetching archive %s: %w", src, err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("fetching archive %s: %w", src, err)
	}
	hw := bundle.NewHashingWriter()
	_, err = io.Copy(io.MultiWriter(f, hw), contextReader{ctx, r})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("fetching archive %s: %w", src, err)
	}
	if got := hw.Sum().SHA256; got != m.Bundle.SHA256 {
		return "", fmt.Errorf("archive %s: sha256 is %s, manifest says %s: fetch it again, or fix the manifest if the archive was rebuilt", src, got, m.Bundle.SHA256)
	}
	return tmp, nil
}

// contextReader stops a copy when its context ends.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// bundleRoot finds bundle.json in stage, or in its only subdirectory.
func bundleRoot(stage string) (string, error) {
	if _, err := os.Stat(filepath.Join(stage, bundle.FileName)); err == nil {
		return stage, nil
	}
	entries, err := os.ReadDir(stage)
	if err != nil {
		return "", err
	}
	if len(entries) == 1 && entries[0].IsDir() {
		sub := filepath.Join(stage, entries[0].Name())
		if _, err := os.Stat(filepath.Join(sub, bundle.FileName)); err == nil {
			return sub, nil
		}
	}
	return "", fmt.Errorf("no %s at its top or in its only directory: it is not a runtime bundle archive", bundle.FileName)
}

// personalize gives a freshly unpacked bundle its SSH key (the one of the
// bundle at out when there is one, else a new pair), rebuilds the work-seeds
// for that key, applies the manifest's firecracker, and saves bundle.json.
func (in *installer) personalize(ctx context.Context, bun *bundle.Bundle, m *Manifest, stage, out string) error {
	changed := map[string]bool{}
	if bun.SSHKey == "" {
		bun.SSHKey = bundle.FileSSHKey
	}
	keyPath := bun.Path(bun.SSHKey)
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		if old, err := bundle.Load(out); err == nil && old.SSHKey != "" {
			if err := copyKeyPair(old.Path(old.SSHKey), keyPath); err != nil {
				in.log.Warn("not keeping the old bundle's ssh key", "err", err)
			} else {
				in.log.Info("keeping the ssh key of the bundle being replaced", "key", old.Path(old.SSHKey))
			}
		}
		key, generated, err := bundle.EnsureKey(filepath.Dir(keyPath), filepath.Base(keyPath))
		if err != nil {
			return err
		}
		if generated {
			in.log.Info("generated a new ssh key pair", "key", filepath.Join(out, bun.SSHKey))
		}
		var seeds []string
		for _, im := range bun.Images {
			if im.WorkSeed != "" && !slices.Contains(seeds, im.WorkSeed) {
				seeds = append(seeds, im.WorkSeed)
			}
		}
		for _, seed := range seeds {
			final := bun.Path(seed)
			tmp, err := bundle.TempPath(final)
			if err != nil {
				return fmt.Errorf("rebuilding work-seed %s: %w", seed, err)
			}
			if err := in.workSeed(ctx, key, tmp); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("rebuilding work-seed %s for the bundle's ssh key: %w", seed, err)
			}
			if err := os.Rename(tmp, final); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("rebuilding work-seed %s: %w", seed, err)
			}
			changed[seed] = true
		}
	}
	if fc := m.Bundle.Firecracker; fc != "" {
		rel, err := firecrackerInBundle(bun.Dir(), stage, fc)
		if err != nil {
			return err
		}
		if err := os.Chmod(bun.Path(rel), 0o755); err != nil {
			return fmt.Errorf("making firecracker %s executable: %w", rel, err)
		}
		bun.Firecracker = rel
		changed[rel] = true
	}
	if len(changed) == 0 {
		return nil
	}
	for rel := range changed {
		sum, err := bundle.HashPath(bun.Path(rel))
		if err != nil {
			return err
		}
		bun.SetArtifact(rel, sum)
	}
	return bun.Save()
}

// firecrackerInBundle resolves the manifest's firecracker path, relative to the
// bundle root or else to the archive root, to a path relative to the bundle root.
func firecrackerInBundle(root, stage, fc string) (string, error) {
	for _, base := range []string{root, stage} {
		p := filepath.Join(base, fc)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		rel, err := filepath.Rel(root, p)
		if err == nil && filepath.IsLocal(rel) {
			return rel, nil
		}
	}
	return "", fmt.Errorf("finding firecracker %q in the archive: no such regular file inside the bundle: fix the manifest's firecracker path", fc)
}

// copyKeyPair copies a private key and its .pub to dst and dst.pub.
func copyKeyPair(src, dst string) error {
	for _, suffix := range []string{"", ".pub"} {
		data, err := os.ReadFile(src + suffix)
		if err != nil {
			return err
		}
		perm := fs.FileMode(0o600)
		if suffix != "" {
			perm = 0o644
		}
		if err := atomicfile.Write(dst+suffix, data, perm); err != nil {
			return err
		}
	}
	return nil
}

// swapDir replaces dst with src (a directory on the same file system): dst is
// renamed aside, src renamed in, and the old tree removed. When the second
// rename fails the old tree is put back.
func swapDir(src, dst string) error {
	old := ""
	if _, err := os.Lstat(dst); err == nil {
		old = filepath.Join(filepath.Dir(dst), fmt.Sprintf(".%s.old.tmp-%d", filepath.Base(dst), time.Now().UnixNano()))
		if err := os.Rename(dst, old); err != nil {
			return fmt.Errorf("moving old bundle %s aside: %w", dst, err)
		}
	}
	if err := os.Rename(src, dst); err != nil {
		if old != "" {
			if rerr := os.Rename(old, dst); rerr != nil {
				return fmt.Errorf("moving new bundle into %s: %w (and restoring the old one from %s: %w)", dst, err, old, rerr)
			}
		}
		return fmt.Errorf("moving new bundle into %s: %w", dst, err)
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("removing old bundle %s: %w", old, err)
		}
	}
	return nil
}

// extractTarGz unpacks a gzip'd tar into dir (which must exist). Entries
// must be directories, regular files or symlinks pointing down their own
// directory; absolute paths, ".." and writes through symlinks are refused.
// Regular files are written sparse.
func extractTarGz(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Read to the gzip trailer so that truncation and CRC errors show.
			_, err = io.Copy(io.Discard, zr)
			return err
		}
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if name == "" || path.IsAbs(name) || slices.Contains(strings.Split(name, "/"), "..") || !filepath.IsLocal(filepath.FromSlash(name)) {
			return fmt.Errorf("entry %q: path leaves the archive's directory", hdr.Name)
		}
		rel := filepath.FromSlash(path.Clean(name))
		target := filepath.Join(dir, rel)
		if err := noSymlinkParents(dir, rel); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, hdr.FileInfo().Mode().Perm())
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			n, err := bundle.SparseCopy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("entry %q: got %d bytes, header says %d", hdr.Name, n, hdr.Size)
			}
		case tar.TypeSymlink:
			if !bundle.SafeLinkTarget(hdr.Linkname) {
				return fmt.Errorf("entry %q: symlink target %q may leave its directory", hdr.Name, hdr.Linkname)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		default:
			return fmt.Errorf("entry %q: unsupported tar entry type %q (hard links and devices are refused)", hdr.Name, hdr.Typeflag)
		}
	}
}

// noSymlinkParents refuses rel when one of its existing parent directories
// under dir is a symlink.
func noSymlinkParents(dir, rel string) error {
	parts := strings.Split(filepath.Dir(rel), string(filepath.Separator))
	p := dir
	for _, part := range parts {
		if part == "." {
			continue
		}
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("path goes through symlink %s", p)
		}
	}
	return nil
}

// Dist packs the bundle at runtimeDir into distDir/banger-runtime-<kver>.tar.gz,
// leaving out the SSH key pair, and writes distDir/runtime-bundle.toml pointing
// at it. It returns the manifest's path.
func Dist(ctx context.Context, runtimeDir, distDir string) (manifestPath string, err error) {
	bun, err := bundle.Load(runtimeDir)
	if err != nil {
		return "", fmt.Errorf("packing runtime bundle: %w", err)
	}
	if err := bun.Verify(); err != nil {
		return "", fmt.Errorf("packing runtime bundle: %w", err)
	}
	if err := os.MkdirAll(distDir, 0o755); err != nil {
		return "", fmt.Errorf("packing runtime bundle: %w", err)
	}
	name := "banger-runtime-" + bun.KernelVersion
	archive := filepath.Join(distDir, name+".tar.gz")
	sum, err := writeArchive(ctx, bun, name, archive)
	if err != nil {
		return "", fmt.Errorf("packing runtime bundle %s into %s: %w", bun.Dir(), archive, err)
	}
	m := Manifest{Bundle: ManifestBundle{
		Archive:     filepath.Base(archive),
		SHA256:      sum.SHA256,
		Version:     bun.KernelVersion,
		Firecracker: bun.Firecracker,
	}}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# banger runtime bundle manifest, written by `banger runtime dist`.\n")
	fmt.Fprintf(&buf, "# Install with: banger runtime install --manifest %s\n", ManifestFile)
	fmt.Fprintf(&buf, "# The archive holds no SSH key; install generates one.\n\n")
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(m); err != nil {
		return "", fmt.Errorf("encoding %s: %w", ManifestFile, err)
	}
	manifestPath = filepath.Join(distDir, ManifestFile)
	if err := atomicfile.Write(manifestPath, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", manifestPath, err)
	}
	return manifestPath, nil
}

// distPaths lists what an archive holds, relative to the bundle root:
// bundle.json and every artifact (trees expanded), never the key pair.
func distPaths(bun *bundle.Bundle) ([]string, error) {
	paths := []string{bundle.FileName}
	for _, a := range bun.Artifacts {
		p := bun.Path(a.Path)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			paths = append(paths, a.Path)
			continue
		}
		entries, err := bundle.WalkTree(p)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			paths = append(paths, filepath.Join(a.Path, filepath.FromSlash(e.Rel)))
		}
	}
	return slices.DeleteFunc(paths, func(p string) bool {
		return strings.HasPrefix(filepath.Base(p), bundle.FileSSHKey) ||
			(bun.SSHKey != "" && (p == bun.SSHKey || p == bun.SSHKey+".pub"))
	}), nil
}

// writeArchive writes the tar.gz through a temporary file and returns its sum.
func writeArchive(ctx context.Context, bun *bundle.Bundle, prefix, archive string) (bundle.FileSum, error) {
	paths, err := distPaths(bun)
	if err != nil {
		return bundle.FileSum{}, err
	}
	tmp, err := bundle.TempPath(archive)
	if err != nil {
		return bundle.FileSum{}, err
	}
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return bundle.FileSum{}, err
	}
	defer f.Close()
	hw := bundle.NewHashingWriter()
	zw := gzip.NewWriter(io.MultiWriter(f, hw))
	tw := tar.NewWriter(zw)
	dirs := map[string]bool{}
	for _, rel := range paths {
		if err := ctx.Err(); err != nil {
			return bundle.FileSum{}, err
		}
		// Parent directories first, once each.
		var parents []string
		for d := filepath.Dir(rel); d != "."; d = filepath.Dir(d) {
			parents = append(parents, d)
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: prefix + "/" + filepath.ToSlash(d) + "/", Mode: 0o755, ModTime: time.Now()}); err != nil {
				return bundle.FileSum{}, err
			}
		}
		if err := addToTar(tw, bun.Path(rel), prefix+"/"+filepath.ToSlash(rel)); err != nil {
			return bundle.FileSum{}, fmt.Errorf("adding %s: %w", rel, err)
		}
	}
	if err := tw.Close(); err != nil {
		return bundle.FileSum{}, err
	}
	if err := zw.Close(); err != nil {
		return bundle.FileSum{}, err
	}
	if err := f.Close(); err != nil {
		return bundle.FileSum{}, err
	}
	if err := os.Rename(tmp, archive); err != nil {
		return bundle.FileSum{}, err
	}
	return hw.Sum(), nil
}

func addToTar(tw *tar.Writer, path, name string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(path); err != nil {
			return err
		}
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file or symlink", path)
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if link != "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(tw, f)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("%s changed size while being packed", path)
	}
	return err
}
