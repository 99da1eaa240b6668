// Package xbps reads Void Linux xbps repositories: it parses the repodata index, resolves packages and their run_depends, downloads .xbps files verified against the index and unpacks them safely.
package xbps

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"howett.net/plist"
)

// Limits on what a repository may make us read.
const (
	// maxIndexSize bounds the uncompressed index.plist (Void's own x86_64
	// index is a few tens of megabytes).
	maxIndexSize = 512 << 20
	// maxMetaSize bounds index-meta.plist and stage.plist.
	maxMetaSize = 1 << 20
	// maxZstdWindow bounds the decompression window a zstd stream may ask for.
	maxZstdWindow = 128 << 20
)

// Package is one entry of a repository index.
type Package struct {
	// Name is the index key, e.g. "glibc".
	Name string `plist:"-"`
	// Pkgver is name-version_revision, e.g. "glibc-2.39_1".
	Pkgver string `plist:"pkgver"`
	// Arch is the package's architecture ("x86_64" or "noarch"); it names
	// the file: <pkgver>.<arch>.xbps.
	Arch string `plist:"architecture"`
	// RunDepends are dependency patterns, e.g. "glibc>=2.32_1".
	RunDepends []string `plist:"run_depends"`
	// Provides are virtual pkgvers this package also satisfies, e.g. "awk-0_1".
	Provides []string `plist:"provides"`
	// SHA256 is the hex sha256 of the .xbps file.
	SHA256 string `plist:"filename-sha256"`
	// Size is the size of the .xbps file in bytes.
	Size int64 `plist:"filename-size"`
	// InstalledSize is the size of the unpacked files in bytes.
	InstalledSize int64 `plist:"installed_size"`
	// ShlibProvides and ShlibRequires are sonames, e.g. "libc.so.6".
	ShlibProvides []string `plist:"shlib-provides"`
	ShlibRequires []string `plist:"shlib-requires"`
	// Alternatives maps an alternatives group (e.g. "sh") to
	// "link:target" pairs, e.g. "/usr/bin/sh:dash".
	Alternatives map[string][]string `plist:"alternatives"`
	// ShortDesc is the one-line description.
	ShortDesc string `plist:"short_desc"`
}

// Version returns the version with revision, e.g. "2.39_1".
func (p *Package) Version() string {
	_, v, _ := SplitPkgver(p.Pkgver)
	return v
}

// Filename is the package's file name in the repository.
func (p *Package) Filename() string {
	return p.Pkgver + "." + p.Arch + ".xbps"
}

// Index is a parsed repository index.
type Index struct {
	// Packages maps package names to their entries.
	Packages map[string]*Package
	// Signed reports whether index-meta.plist carried signing metadata
	// (banger does not verify repository signatures).
	Signed bool
}

// Repodata member names, in the order xbps writes them.
const (
	memberIndex = "index.plist"
	memberMeta  = "index-meta.plist"
	memberStage = "stage.plist"
)

var (
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	gzipMagic = []byte{0x1f, 0x8b}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// decompress returns a reader of the archive r holds, compressed with zstd
// (what xbps writes by default) or gzip, or not at all. close releases it.
func decompress(r io.Reader) (out io.Reader, closeFn func(), err error) {
	br := bufio.NewReader(r)
	head, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, nil, fmt.Errorf("opening zstd stream: %w", err)
		}
		return zr, zr.Close, nil
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("opening gzip stream: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(head, xzMagic):
		return nil, nil, errors.New("xz compression is not supported (only zstd and gzip): rebuild the repository with xbps-rindex's default zstd")
	}
	return br, func() {}, nil
}

// ParseRepodata reads an <arch>-repodata archive: a (zstd) tar holding
// index.plist, then index-meta.plist and optionally stage.plist.
func ParseRepodata(r io.Reader) (*Index, error) {
	dr, closeFn, err := decompress(r)
	if err != nil {
		return nil, fmt.Errorf("reading repodata: %w", err)
	}
	defer closeFn()
	tr := tar.NewReader(dr)
	var idx *Index
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading repodata: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("reading repodata: member %q is not a regular file", h.Name)
		}
		switch h.Name {
		case memberIndex:
			if idx != nil {
				return nil, fmt.Errorf("reading repodata: %s appears twice", memberIndex)
			}
			data, err := readMember(tr, h, maxIndexSize)
			if err != nil {
				return nil, fmt.Errorf("reading repodata: %w", err)
			}
			if idx, err = ParseIndex(data); err != nil {
				return nil, fmt.Errorf("reading repodata: %w", err)
			}
		case memberMeta:
			if idx == nil {
				return nil, fmt.Errorf("reading repodata: %s before %s", memberMeta, memberIndex)
			}
			data, err := readMember(tr, h, maxMetaSize)
			if err != nil {
				return nil, fmt.Errorf("reading repodata: %w", err)
			}
			if idx.Signed, err = parseMeta(data); err != nil {
				return nil, fmt.Errorf("reading repodata: %w", err)
			}
		case memberStage:
			// Packages staged for a later index update; xbps installs from the index.
			if _, err := readMember(tr, h, maxIndexSize); err != nil {
				return nil, fmt.Errorf("reading repodata: %w", err)
			}
		default:
			return nil, fmt.Errorf("reading repodata: unexpected member %q", h.Name)
		}
	}
	if idx == nil {
		return nil, fmt.Errorf("reading repodata: no %s in the archive", memberIndex)
	}
	return idx, nil
}

func readMember(r io.Reader, h *tar.Header, limit int64) ([]byte, error) {
	if h.Size < 0 || h.Size > limit {
		return nil, fmt.Errorf("member %s: %d bytes is more than the %d allowed", h.Name, h.Size, limit)
	}
	data, err := io.ReadAll(io.LimitReader(r, h.Size))
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", h.Name, err)
	}
	return data, nil
}

// parseMeta reports whether index-meta.plist carries a signature; an empty
// member (or xbps' old "DEADBEEF" placeholder) means unsigned.
func parseMeta(data []byte) (bool, error) {
	if len(bytes.TrimSpace(data)) == 0 || string(bytes.TrimSpace(data)) == "DEADBEEF" {
		return false, nil
	}
	var meta map[string]any
	if _, err := plist.Unmarshal(data, &meta); err != nil {
		return false, fmt.Errorf("parsing %s: %w", memberMeta, err)
	}
	_, signed := meta["signature-by"]
	return signed, nil
}

// nameRE is what banger accepts as a package name: xbps allows more in
// principle, but every name in Void's repositories fits.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}$`)

// hexRE is a sha256 in hex.
var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// archRE is an architecture as it appears in file names.
var archRE = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

// ParseIndex parses index.plist: a dictionary from package name to the
// package's properties. Every entry is checked: its pkgver must name the key,
// and its file name, sha256 and size must be usable, so that nothing later
// builds a path or URL from a hostile value.
func ParseIndex(data []byte) (*Index, error) {
	raw := map[string]*Package{}
	if _, err := plist.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", memberIndex, err)
	}
	idx := &Index{Packages: make(map[string]*Package, len(raw))}
	for key, p := range raw {
		if p == nil {
			return nil, fmt.Errorf("parsing %s: package %q has no properties", memberIndex, key)
		}
		if err := p.check(key); err != nil {
			return nil, fmt.Errorf("parsing %s: %w", memberIndex, err)
		}
		p.Name = key
		idx.Packages[key] = p
	}
	return idx, nil
}

func (p *Package) check(key string) error {
	if !nameRE.MatchString(key) {
		return fmt.Errorf("invalid package name %q", key)
	}
	name, _, ok := SplitPkgver(p.Pkgver)
	if !ok || strings.ContainsAny(p.Pkgver, "/\\ \t\n") {
		return fmt.Errorf("package %s: invalid pkgver %q", key, p.Pkgver)
	}
	if name != key {
		return fmt.Errorf("package %s: pkgver %q names another package", key, p.Pkgver)
	}
	if !archRE.MatchString(p.Arch) {
		return fmt.Errorf("package %s: invalid architecture %q", key, p.Arch)
	}
	if !hexRE.MatchString(p.SHA256) {
		return fmt.Errorf("package %s: invalid filename-sha256 %q", key, p.SHA256)
	}
	if p.Size <= 0 {
		return fmt.Errorf("package %s: invalid filename-size %d", key, p.Size)
	}
	for _, d := range p.RunDepends {
		if d == "" || strings.ContainsAny(d, " \t\n/") {
			return fmt.Errorf("package %s: invalid run_depends entry %q", key, d)
		}
	}
	for _, v := range p.Provides {
		if _, _, ok := SplitPkgver(v); !ok {
			return fmt.Errorf("package %s: invalid provides entry %q (want name-version_revision)", key, v)
		}
	}
	for group, alts := range p.Alternatives {
		if !nameRE.MatchString(group) {
			return fmt.Errorf("package %s: invalid alternatives group %q", key, group)
		}
		for _, a := range alts {
			if _, _, ok := strings.Cut(a, ":"); !ok {
				return fmt.Errorf("package %s: alternatives %s: entry %q is not link:target", key, group, a)
			}
		}
	}
	return nil
}

// Names returns the index's package names, sorted.
func (ix *Index) Names() []string {
	names := make([]string, 0, len(ix.Packages))
	for n := range ix.Packages {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
