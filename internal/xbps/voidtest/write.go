// Package voidtest writes xbps repositories in Void Linux's own formats, for tests and for the local fixture mirror built from Debian's binaries.
package voidtest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"howett.net/plist"
)

// DefaultArch is the architecture packages get when Pkg.Arch is empty.
const DefaultArch = "x86_64"

// File is one entry of a synthetic package.
type File struct {
	// Name is the path inside the package, without a leading "./" or "/".
	Name string
	// Mode is the permission bits (and set-id bits); default 0644, or 0755
	// for directories.
	Mode fs.FileMode
	// Data is a regular file's contents.
	Data []byte
	// Link makes the entry a symlink to Link.
	Link string
	// Dir makes the entry a directory.
	Dir bool
	// Hardlink makes the entry a hard link to the package path Hardlink.
	Hardlink string
	// Type forces a raw tar type (for tests of refused entries).
	Type byte
	// Raw writes Name into the archive exactly as given (for tests of
	// hostile names such as "../x" or "/etc/x").
	Raw bool
	// UID and GID own the entry.
	UID, GID int
}

// Pkg is one package to write.
type Pkg struct {
	Name string
	// Version is version_revision, e.g. "2.39_1".
	Version string
	// Arch defaults to DefaultArch.
	Arch          string
	Depends       []string
	Provides      []string
	Alternatives  map[string][]string
	ShlibProvides []string
	ShlibRequires []string
	ShortDesc     string
	// Install is the package's INSTALL script.
	Install string
	// Files are written first, then the tree at Tree (a directory whose
	// contents become the package), when set.
	Files []File
	Tree  string
	// PropsPkgver overrides the pkgver in props.plist (for tests of
	// packages that lie about themselves).
	PropsPkgver string
}

// Pkgver is name-version_revision.
func (p Pkg) Pkgver() string { return p.Name + "-" + p.Version }

func (p Pkg) arch() string {
	if p.Arch == "" {
		return DefaultArch
	}
	return p.Arch
}

// Filename is the .xbps file name.
func (p Pkg) Filename() string { return p.Pkgver() + "." + p.arch() + ".xbps" }

// Entry is a package's index.plist entry.
type Entry struct {
	Pkgver        string              `plist:"pkgver"`
	Architecture  string              `plist:"architecture"`
	RunDepends    []string            `plist:"run_depends,omitempty"`
	Provides      []string            `plist:"provides,omitempty"`
	Alternatives  map[string][]string `plist:"alternatives,omitempty"`
	ShlibProvides []string            `plist:"shlib-provides,omitempty"`
	ShlibRequires []string            `plist:"shlib-requires,omitempty"`
	ShortDesc     string              `plist:"short_desc,omitempty"`
	InstalledSize int64               `plist:"installed_size"`
	SHA256        string              `plist:"filename-sha256"`
	Size          int64               `plist:"filename-size"`
	BuildDate     string              `plist:"build-date,omitempty"`
}

// props is the props.plist of a package.
type props struct {
	Pkgname       string              `plist:"pkgname"`
	Pkgver        string              `plist:"pkgver"`
	Version       string              `plist:"version"`
	Architecture  string              `plist:"architecture"`
	RunDepends    []string            `plist:"run_depends,omitempty"`
	Provides      []string            `plist:"provides,omitempty"`
	Alternatives  map[string][]string `plist:"alternatives,omitempty"`
	ShlibProvides []string            `plist:"shlib-provides,omitempty"`
	ShlibRequires []string            `plist:"shlib-requires,omitempty"`
	ShortDesc     string              `plist:"short_desc,omitempty"`
	InstalledSize int64               `plist:"installed_size"`
}

type filesEntry struct {
	File   string `plist:"file"`
	SHA256 string `plist:"sha256,omitempty"`
	Size   int64  `plist:"size,omitempty"`
	Target string `plist:"target,omitempty"`
}

type filesPlist struct {
	Files []filesEntry `plist:"files,omitempty"`
	Links []filesEntry `plist:"links,omitempty"`
	Dirs  []filesEntry `plist:"dirs,omitempty"`
}

// epoch dates every entry, so that a package's bytes depend only on its contents.
var epoch = time.Unix(0, 0)

// WritePackage writes p as dir/<pkgver>.<arch>.xbps (a zstd-compressed tar
// with ./INSTALL, ./props.plist, ./files.plist and the files) and returns
// its index entry with the file's sha256 and size.
func WritePackage(dir string, p Pkg) (*Entry, error) {
	entries, err := p.entries()
	if err != nil {
		return nil, fmt.Errorf("writing package %s: %w", p.Pkgver(), err)
	}
	var fp filesPlist
	var installed int64
	for _, e := range entries {
		switch {
		case e.hdr.Typeflag == tar.TypeDir:
			fp.Dirs = append(fp.Dirs, filesEntry{File: "/" + e.name})
		case e.hdr.Typeflag == tar.TypeSymlink:
			fp.Links = append(fp.Links, filesEntry{File: "/" + e.name, Target: e.hdr.Linkname})
		case e.hdr.Typeflag == tar.TypeReg:
			sum, n, err := e.sum()
			if err != nil {
				return nil, fmt.Errorf("writing package %s: %w", p.Pkgver(), err)
			}
			installed += n
			fp.Files = append(fp.Files, filesEntry{File: "/" + e.name, SHA256: sum, Size: n})
		}
	}
	pkgver := p.Pkgver()
	pr := props{
		Pkgname: p.Name, Pkgver: pkgver, Version: p.Version, Architecture: p.arch(),
		RunDepends: p.Depends, Provides: p.Provides, Alternatives: p.Alternatives,
		ShlibProvides: p.ShlibProvides, ShlibRequires: p.ShlibRequires,
		ShortDesc: p.ShortDesc, InstalledSize: installed,
	}
	if p.PropsPkgver != "" {
		pr.Pkgver = p.PropsPkgver
	}
	propsXML, err := plist.MarshalIndent(pr, plist.XMLFormat, "\t")
	if err != nil {
		return nil, fmt.Errorf("writing package %s: props.plist: %w", pkgver, err)
	}
	filesXML, err := plist.MarshalIndent(fp, plist.XMLFormat, "\t")
	if err != nil {
		return nil, fmt.Errorf("writing package %s: files.plist: %w", pkgver, err)
	}

	out := filepath.Join(dir, p.Filename())
	tmp, err := os.CreateTemp(dir, ".pkg-*")
	if err != nil {
		return nil, fmt.Errorf("writing package %s: %w", pkgver, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(2))
	if err != nil {
		tmp.Close()
		return nil, err
	}
	tw := tar.NewWriter(zw)
	meta := func(name string, data []byte, mode int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	werr := func() error {
		if p.Install != "" {
			if err := meta("./INSTALL", []byte(p.Install), 0o755); err != nil {
				return err
			}
		}
		if err := meta("./props.plist", propsXML, 0o644); err != nil {
			return err
		}
		if err := meta("./files.plist", filesXML, 0o644); err != nil {
			return err
		}
		for _, e := range entries {
			if err := e.write(tw); err != nil {
				return fmt.Errorf("%s: %w", e.name, err)
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return zw.Close()
	}()
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("writing package %s: %w", pkgver, werr)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return nil, fmt.Errorf("writing package %s: %w", pkgver, err)
	}
	return &Entry{
		Pkgver: pkgver, Architecture: p.arch(), RunDepends: p.Depends, Provides: p.Provides,
		Alternatives: p.Alternatives, ShlibProvides: p.ShlibProvides, ShlibRequires: p.ShlibRequires,
		ShortDesc: p.ShortDesc, InstalledSize: installed,
		SHA256: hex.EncodeToString(h.Sum(nil)), Size: cw.n,
	}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// entry is one archive member other than the metadata.
type entry struct {
	name    string // without "./"
	tarName string // the archive name, when not "./" + name
	hdr     tar.Header
	data    []byte // for synthetic files
	src     string // for files of a tree
}

func (e *entry) open() (io.ReadCloser, error) {
	if e.src != "" {
		return os.Open(e.src)
	}
	return io.NopCloser(bytes.NewReader(e.data)), nil
}

func (e *entry) sum() (string, int64, error) {
	r, err := e.open()
	if err != nil {
		return "", 0, err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

func (e *entry) write(tw *tar.Writer) error {
	hdr := e.hdr
	hdr.Name = "./" + e.name
	if hdr.Typeflag == tar.TypeDir {
		hdr.Name += "/"
	}
	if e.tarName != "" {
		hdr.Name = e.tarName
	}
	if err := tw.WriteHeader(&hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	r, err := e.open()
	if err != nil {
		return err
	}
	defer r.Close()
	n, err := io.Copy(tw, r)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("size changed while packing: %d, was %d", n, hdr.Size)
	}
	return err
}

// entries lists the package's members: Files as given, then Tree sorted.
func (p Pkg) entries() ([]*entry, error) {
	var out []*entry
	for _, f := range p.Files {
		name := strings.Trim(f.Name, "/")
		hdr := tar.Header{ModTime: epoch, Uid: f.UID, Gid: f.GID, Format: tar.FormatPAX}
		mode := f.Mode
		switch {
		case f.Type != 0:
			hdr.Typeflag = f.Type
			hdr.Linkname = f.Link
		case f.Dir:
			hdr.Typeflag = tar.TypeDir
			if mode == 0 {
				mode = 0o755
			}
		case f.Link != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = f.Link
			mode = 0o777
		case f.Hardlink != "":
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = "./" + strings.Trim(f.Hardlink, "/")
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
			if mode == 0 {
				mode = 0o644
			}
		}
		hdr.Mode = int64(tarMode(mode))
		if name == "" && !f.Raw {
			return nil, fmt.Errorf("file with empty name")
		}
		e := &entry{name: name, hdr: hdr, data: f.Data}
		if f.Raw {
			e.tarName = f.Name
		}
		out = append(out, e)
	}
	if p.Tree != "" {
		tree, err := treeEntries(p.Tree)
		if err != nil {
			return nil, err
		}
		out = append(out, tree...)
	}
	return out, nil
}

// tarMode converts permission and set-id bits to tar's mode field.
func tarMode(m fs.FileMode) int {
	v := int(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return v
}

// treeEntries lists a directory's contents (not the directory itself) as
// package members, sorted, keeping modes, owners and symlink targets. Hard
// links within the tree become tar hard links.
func treeEntries(root string) ([]*entry, error) {
	var out []*entry
	seen := map[[2]uint64]string{} // dev, ino -> first name
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		hdr := tar.Header{ModTime: epoch, Mode: int64(tarMode(fi.Mode())), Format: tar.FormatPAX}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		}
		e := &entry{name: rel}
		switch {
		case fi.IsDir():
			hdr.Typeflag = tar.TypeDir
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, t
		case fi.Mode().IsRegular():
			st, _ := fi.Sys().(*syscall.Stat_t)
			if st != nil && st.Nlink > 1 {
				key := [2]uint64{uint64(st.Dev), st.Ino}
				if first, ok := seen[key]; ok {
					hdr.Typeflag, hdr.Linkname = tar.TypeLink, "./"+first
					e.hdr = hdr
					out = append(out, e)
					return nil
				}
				seen[key] = rel
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			e.src = p
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
		}
		e.hdr = hdr
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", root, err)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	// Sorting may put a hard link before the file it names: keep links after.
	var files, links []*entry
	for _, e := range out {
		if e.hdr.Typeflag == tar.TypeLink {
			links = append(links, e)
		} else {
			files = append(files, e)
		}
	}
	return append(files, links...), nil
}

// WriteRepodata writes dir/<arch>-repodata: a zstd-compressed tar holding
// index.plist (entries keyed by package name) and an empty
// index-meta.plist (an unsigned repository), as xbps-rindex does.
func WriteRepodata(dir, arch string, entries map[string]*Entry) error {
	if arch == "" {
		arch = DefaultArch
	}
	idx, err := plist.MarshalIndent(entries, plist.XMLFormat, "\t")
	if err != nil {
		return fmt.Errorf("writing repodata: index.plist: %w", err)
	}
	return WriteRepodataMembers(filepath.Join(dir, arch+"-repodata"), []Member{{"index.plist", idx}, {"index-meta.plist", nil}})
}

// Member is one file of a repodata archive.
type Member struct {
	Name string
	Data []byte
}

// WriteRepodataMembers writes a zstd tar of members to path (tests use it
// to write broken repodata).
func WriteRepodataMembers(file string, members []Member) error {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, m := range members {
		if err := tw.WriteHeader(&tar.Header{Name: m.Name, Mode: 0o644, Size: int64(len(m.Data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(m.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return nil
}

// WriteRepo writes pkgs and their repodata into mirror/current, the layout
// of a Void mirror, and returns the index entries by name.
func WriteRepo(mirror string, pkgs []Pkg) (map[string]*Entry, error) {
	dir := path.Join(mirror, "current")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	entries := map[string]*Entry{}
	for _, p := range pkgs {
		e, err := WritePackage(dir, p)
		if err != nil {
			return nil, err
		}
		entries[p.Name] = e
	}
	if err := WriteRepodata(dir, DefaultArch, entries); err != nil {
		return nil, err
	}
	return entries, nil
}
