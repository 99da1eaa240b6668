package transfer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits on an archive coming from a guest. archive/tar already caps PAX
// and GNU long-name records at 1 MiB; these are tighter.
const (
	maxName      = 4096 // bytes in an entry's name or a link's target
	maxComponent = 255
	maxDepth     = 256
	maxEntries   = 10_000_000
)

// UnsafeError is an archive from a guest that banger refuses to write.
type UnsafeError struct {
	Entry  string
	Reason string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("entry %q: %s", e.Entry, e.Reason)
}

func unsafe(entry, format string, args ...any) error {
	if len(entry) > 200 {
		entry = entry[:200] + "..."
	}
	return &UnsafeError{Entry: entry, Reason: fmt.Sprintf(format, args...)}
}

// Dest is where a copy lands on the host: inside an existing directory,
// or at a path of its own.
type Dest struct {
	Path string
	Into bool // Path is a directory the sources go into
}

// ResolveDest checks a host destination before anything is received: an
// existing directory takes any number of sources; otherwise one source is
// copied to the path itself, whose parent must be a directory.
func ResolveDest(dst string, sources int) (Dest, error) {
	fi, err := os.Stat(dst)
	if err == nil && fi.IsDir() {
		return Dest{Path: dst, Into: true}, nil
	}
	if errors.Is(err, syscall.ENOTDIR) && strings.HasSuffix(dst, "/") {
		return Dest{}, fmt.Errorf("%s is not a directory", dst)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Dest{}, fmt.Errorf("reading %s: %w", dst, err)
	}
	if strings.HasSuffix(dst, "/") {
		if err == nil {
			return Dest{}, fmt.Errorf("%s is not a directory", dst)
		}
		return Dest{}, fmt.Errorf("%s: no such directory", dst)
	}
	if sources > 1 {
		return Dest{}, fmt.Errorf("%s is not a directory: copying several sources needs an existing directory", dst)
	}
	parent := filepath.Dir(dst)
	if pfi, err := os.Stat(parent); err != nil || !pfi.IsDir() {
		return Dest{}, fmt.Errorf("%s: no such directory", parent)
	}
	return Dest{Path: dst}, nil
}

// Parent is the directory the copy's names are made in; the staging
// directory goes there too, so the final renames stay on one filesystem.
func (d Dest) Parent() string {
	if d.Into {
		return d.Path
	}
	return filepath.Dir(d.Path)
}

// Target is where a source named name ends up.
func (d Dest) Target(name string) string {
	if d.Into {
		return filepath.Join(d.Path, name)
	}
	return d.Path
}

// Receiver extracts a guest's archive into a staging directory and then
// moves it into place. The archive is hostile input: every entry must lie
// under the top entry of the source being received, with a clean relative
// name, below a directory this archive made (so nothing is ever written
// through a symlink), and be a directory, a regular file, a symlink that
// stays inside its source, or a hard link to a file of this archive. Modes
// keep their permission bits only (no setuid, setgid or sticky), owners are
// never set, and mtimes are kept.
type Receiver struct {
	Stage     string   // an empty directory of ours beside the destination
	Dest      Dest     // where the sources go
	Names     []string // the name of each source at Dest ("" = its name in the archive)
	Recursive bool
	// Progress, if set, is called with each chunk of file data written.
	Progress func(n int64)

	tops    []top
	dirs    map[string]bool   // archive names of directories made
	files   map[string]string // archive names of regular files made -> staged path
	seen    map[string]bool
	meta    []dirMeta
	entries int
	totals  Totals
}

type top struct {
	name   string // in the archive
	target string // on the host
	staged string
	isDir  bool
}

type dirMeta struct {
	src   int    // source index
	rel   string // below the source's top ("" = the top itself)
	mode  fs.FileMode
	mtime time.Time
}

// Extract reads the whole archive into r.Stage.
func (r *Receiver) Extract(tr *tar.Reader) error {
	r.dirs, r.files, r.seen = map[string]bool{}, map[string]string{}, map[string]bool{}
	buf := make([]byte, 256<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		if r.entries++; r.entries > maxEntries {
			return unsafe(hdr.Name, "more than %d entries", maxEntries)
		}
		if err := r.entry(tr, hdr, buf); err != nil {
			return err
		}
	}
	if len(r.tops) != len(r.Names) {
		return fmt.Errorf("the guest sent %d of %d sources", len(r.tops), len(r.Names))
	}
	return nil
}

// Totals is what Extract wrote.
func (r *Receiver) Totals() Totals { return r.totals }

// cleanName checks an archive name (or hard link target) and returns it
// without a leading "./" and a directory's trailing "/".
func cleanName(name string) (string, error) {
	if len(name) > maxName {
		return "", unsafe(name, "name longer than %d bytes", maxName)
	}
	n := strings.TrimPrefix(name, "./")
	n = strings.TrimSuffix(n, "/")
	switch {
	case n == "" || n == ".":
		return "", unsafe(name, "empty name")
	case strings.ContainsRune(n, 0):
		return "", unsafe(name, "NUL in name")
	case strings.HasPrefix(n, "/"):
		return "", unsafe(name, "absolute path")
	case path.Clean(n) != n:
		return "", unsafe(name, "not a clean path")
	}
	parts := strings.Split(n, "/")
	if len(parts) > maxDepth {
		return "", unsafe(name, "deeper than %d directories", maxDepth)
	}
	for _, p := range parts {
		if p == ".." {
			return "", unsafe(name, "path climbs out with ..")
		}
		if len(p) > maxComponent {
			return "", unsafe(name, "component longer than %d bytes", maxComponent)
		}
	}
	return n, nil
}

func (r *Receiver) entry(tr *tar.Reader, hdr *tar.Header, buf []byte) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if r.seen[name] {
		return unsafe(hdr.Name, "appears twice")
	}
	r.seen[name] = true
	first, rest, nested := strings.Cut(name, "/")
	if !nested {
		return r.top(tr, hdr, name, buf)
	}
	if len(r.tops) == 0 {
		return unsafe(hdr.Name, "comes before the source it belongs to")
	}
	k := len(r.tops) - 1
	t := r.tops[k]
	if first != t.name || !t.isDir {
		return unsafe(hdr.Name, "lies outside the source being copied (%s)", t.name)
	}
	if parent := path.Dir(name); !r.dirs[parent] {
		return unsafe(hdr.Name, "its directory %q is not a directory of this archive", parent)
	}
	p := filepath.Join(t.staged, filepath.FromSlash(rest))
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("making %s: %w", p, err)
		}
		r.dirs[name] = true
		r.meta = append(r.meta, dirMeta{src: k, rel: rest, mode: permOf(hdr), mtime: hdr.ModTime})
		r.totals.Dirs++
	case tar.TypeReg:
		if err := r.file(tr, hdr, p, buf); err != nil {
			return err
		}
		r.files[name] = p
	case tar.TypeSymlink:
		if err := checkLinkTarget(hdr, rest); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, p); err != nil {
			return fmt.Errorf("making symlink %s: %w", p, err)
		}
		setTimes(p, hdr.ModTime, true)
		r.totals.Links++
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return unsafe(hdr.Name, "hard link target: %v", err)
		}
		staged, ok := r.files[target]
		if !ok {
			return unsafe(hdr.Name, "hard link to %q, which is not a file of this archive", hdr.Linkname)
		}
		if err := os.Link(staged, p); err != nil {
			return fmt.Errorf("making hard link %s: %w", p, err)
		}
		r.totals.Files++
	default:
		return unsafe(hdr.Name, "%s: only regular files, directories and symlinks are copied", typeName(hdr.Typeflag))
	}
	return nil
}

// top handles the entry that starts the next source.
func (r *Receiver) top(tr *tar.Reader, hdr *tar.Header, name string, buf []byte) error {
	k := len(r.tops)
	if k >= len(r.Names) {
		return unsafe(hdr.Name, "more sources than the %d asked for", len(r.Names))
	}
	target := r.Names[k]
	if target == "" {
		target = name
	}
	if !validName(target) {
		return unsafe(hdr.Name, "not a usable file name")
	}
	for _, t := range r.tops {
		if t.target == r.Dest.Target(target) {
			return fmt.Errorf("two sources would both be copied to %s: copy them one at a time", t.target)
		}
	}
	isDir := hdr.Typeflag == tar.TypeDir
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !r.Recursive {
			return unsafe(hdr.Name, "a directory, for a copy without -r")
		}
	case tar.TypeReg:
	default:
		return unsafe(hdr.Name, "%s: a source must be a regular file or a directory", typeName(hdr.Typeflag))
	}
	final := r.Dest.Target(target)
	if fi, err := os.Lstat(final); err == nil {
		switch {
		case fi.IsDir() && !isDir:
			return fmt.Errorf("%s is a directory: cannot overwrite it with a file", final)
		case !fi.IsDir() && isDir:
			return fmt.Errorf("%s exists and is not a directory: cannot overwrite it with a directory", final)
		}
	}
	t := top{name: name, target: final, staged: filepath.Join(r.Stage, fmt.Sprint(k)), isDir: isDir}
	r.tops = append(r.tops, t)
	if isDir {
		if err := os.Mkdir(t.staged, 0o700); err != nil {
			return fmt.Errorf("making %s: %w", t.staged, err)
		}
		r.dirs[name] = true
		r.meta = append(r.meta, dirMeta{src: k, mode: permOf(hdr), mtime: hdr.ModTime})
		r.totals.Dirs++
		return nil
	}
	if err := r.file(tr, hdr, t.staged, buf); err != nil {
		return err
	}
	r.files[name] = t.staged
	return nil
}

// file writes one regular file, never following or replacing anything.
func (r *Receiver) file(tr *tar.Reader, hdr *tar.Header, p string, buf []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("making %s: %w", p, err)
	}
	var w io.Writer = f
	if r.Progress != nil {
		w = &countingWriter{w: f, fn: r.Progress}
	}
	n, err := io.CopyBuffer(w, struct{ io.Reader }{tr}, buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("writing %s: got %d of %d bytes", p, n, hdr.Size)
	}
	if err := os.Chmod(p, permOf(hdr)); err != nil {
		return err
	}
	setTimes(p, hdr.ModTime, false)
	r.totals.Files++
	r.totals.Bytes += n
	return nil
}

// checkLinkTarget refuses a symlink whose target is absolute or climbs
// above the top of its source: it would point outside the copy.
func checkLinkTarget(hdr *tar.Header, rel string) error {
	t := hdr.Linkname
	switch {
	case t == "":
		return unsafe(hdr.Name, "symlink with an empty target")
	case len(t) > maxName:
		return unsafe(hdr.Name, "symlink target longer than %d bytes", maxName)
	case strings.ContainsRune(t, 0):
		return unsafe(hdr.Name, "NUL in symlink target")
	case strings.HasPrefix(t, "/"):
		return unsafe(hdr.Name, "symlink to the absolute path %q points outside the copy", t)
	}
	if j := path.Join(path.Dir(rel), t); j == ".." || strings.HasPrefix(j, "../") {
		return unsafe(hdr.Name, "symlink to %q points outside the copy", t)
	}
	return nil
}

func permOf(hdr *tar.Header) fs.FileMode { return fs.FileMode(hdr.Mode) & fs.ModePerm }

func typeName(t byte) string {
	switch t {
	case tar.TypeChar:
		return "a character device"
	case tar.TypeBlock:
		return "a block device"
	case tar.TypeFifo:
		return "a FIFO"
	case tar.TypeSymlink:
		return "a symlink"
	case tar.TypeLink:
		return "a hard link"
	case tar.TypeGNUSparse:
		return "a sparse file"
	default:
		return fmt.Sprintf("entry type %q", t)
	}
}

// setTimes sets p's mtime (and atime, to the same), best effort.
func setTimes(p string, mtime time.Time, symlink bool) {
	if mtime.IsZero() {
		return
	}
	ts := unix.NsecToTimespec(mtime.UnixNano())
	flags := 0
	if symlink {
		flags = unix.AT_SYMLINK_NOFOLLOW
	}
	unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, flags)
}

type countingWriter struct {
	w  io.Writer
	fn func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if n > 0 {
		c.fn(int64(n))
	}
	return n, err
}

// Commit moves the staged sources to their targets: a new name is one
// rename; a directory onto an existing directory merges entry by entry,
// each a rename, never following a symlink of the destination; a file
// replaces a file or symlink in one rename. Directory modes and mtimes are
// set last, deepest first. Call it only after the guest reported success.
func (r *Receiver) Commit() error {
	for _, t := range r.tops {
		if err := merge(t.staged, t.target, t.isDir); err != nil {
			return err
		}
	}
	for i := len(r.meta) - 1; i >= 0; i-- {
		m := r.meta[i]
		p := r.tops[m.src].target
		if m.rel != "" {
			p = filepath.Join(p, filepath.FromSlash(m.rel))
		}
		if err := os.Chmod(p, m.mode); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", p, err)
		}
		setTimes(p, m.mtime, false)
	}
	return nil
}

func merge(staged, target string, isDir bool) error {
	fi, err := os.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return rename(staged, target)
	case err != nil:
		return fmt.Errorf("reading %s: %w", target, err)
	case fi.IsDir() && isDir:
		ents, err := os.ReadDir(staged)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := merge(filepath.Join(staged, e.Name()), filepath.Join(target, e.Name()), e.IsDir()); err != nil {
				return err
			}
		}
		return nil
	case fi.IsDir():
		return fmt.Errorf("%s is a directory: cannot overwrite it with a file", target)
	case isDir:
		return fmt.Errorf("%s exists and is not a directory: cannot overwrite it with a directory", target)
	default:
		return rename(staged, target)
	}
}

func rename(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("moving the copy into place: %w", err)
	}
	return nil
}
