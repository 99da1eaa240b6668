package transfer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// DoneMarker is the last entry of an archive sent to a guest. The guest
// commits the copy only when it has extracted it, so a stream cut at an
// entry boundary (which tar takes for a clean end) commits nothing.
const DoneMarker = ".banger-cp-done"

// Source is one host path to send, resolved.
type Source struct {
	Arg   string // as given
	Path  string // symlinks of the operand itself followed
	Name  string // its name in a destination directory
	IsDir bool
}

// Totals counts what a copy moved.
type Totals struct {
	Files int   `json:"files"`
	Dirs  int   `json:"dirs"`
	Links int   `json:"symlinks"`
	Bytes int64 `json:"bytes"`
}

// SourceError is a failure reading the host's own files while sending.
type SourceError struct{ Err error }

func (e *SourceError) Error() string { return e.Err.Error() }
func (e *SourceError) Unwrap() error { return e.Err }

// ResolveLocal checks the host sources before anything is sent: each must
// exist, and directories need recursive. The operand itself is followed
// when it is a symlink (as scp does); symlinks inside trees are sent as
// symlinks.
func ResolveLocal(args []string, recursive bool) ([]Source, error) {
	out := make([]Source, 0, len(args))
	names := map[string]string{}
	for _, a := range args {
		real, err := filepath.EvalSymlinks(a)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s: no such file or directory", a)
			}
			return nil, fmt.Errorf("resolving %s: %w", a, err)
		}
		abs, err := filepath.Abs(real)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", a, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", a, err)
		}
		name := baseName(a, false)
		if name == "" {
			name = filepath.Base(abs)
		}
		if !validName(name) {
			return nil, fmt.Errorf("%s: copying the root directory is not supported: name a directory under it", a)
		}
		switch {
		case fi.IsDir() && !recursive:
			return nil, fmt.Errorf("%s is a directory: use -r to copy directories", a)
		case !fi.IsDir() && !fi.Mode().IsRegular():
			return nil, fmt.Errorf("%s is not a regular file or a directory", a)
		}
		if other, ok := names[name]; ok {
			return nil, fmt.Errorf("%s and %s would both be copied to %s: copy them one at a time", other, a, name)
		}
		names[name] = a
		out = append(out, Source{Arg: a, Path: abs, Name: name, IsDir: fi.IsDir()})
	}
	return out, nil
}

// Scan walks the sources as WriteArchive will and counts them, for a
// progress bar's total.
func Scan(srcs []Source) (Totals, error) {
	var t Totals
	for _, s := range srcs {
		err := filepath.WalkDir(s.Path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return &SourceError{fmt.Errorf("reading %s: %w", p, err)}
			}
			switch {
			case d.IsDir():
				t.Dirs++
			case d.Type()&fs.ModeSymlink != 0:
				t.Links++
			case d.Type().IsRegular():
				fi, err := d.Info()
				if err != nil {
					return &SourceError{fmt.Errorf("reading %s: %w", p, err)}
				}
				t.Files++
				t.Bytes += fi.Size()
			}
			return nil
		})
		if err != nil {
			return t, err
		}
	}
	return t, nil
}

// Sender writes the archive of host sources that a guest's receive script
// extracts: source k is the entry "k" (and "k/..." below it), followed by
// DoneMarker.
type Sender struct {
	// Progress, if set, is called with each chunk of file data sent.
	Progress func(n int64)
	// Warn, if set, is told about entries skipped (sockets, devices, FIFOs).
	Warn func(msg string)
}

type devIno struct{ dev, ino uint64 }

// WriteArchive streams srcs to w as a PAX tar archive. Errors reading the
// host's files are *SourceError; others come from w.
func (s *Sender) WriteArchive(w io.Writer, srcs []Source) (Totals, error) {
	var t Totals
	tw := tar.NewWriter(w)
	links := map[devIno]string{}
	buf := make([]byte, 256<<10)
	for k, src := range srcs {
		top := strconv.Itoa(k)
		err := filepath.WalkDir(src.Path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return &SourceError{fmt.Errorf("reading %s: %w", p, err)}
			}
			rel, err := filepath.Rel(src.Path, p)
			if err != nil {
				return &SourceError{err}
			}
			name := top
			if rel != "." {
				name = top + "/" + filepath.ToSlash(rel)
			}
			fi, err := d.Info()
			if err != nil {
				return &SourceError{fmt.Errorf("reading %s: %w", p, err)}
			}
			hdr := &tar.Header{
				Name:    name,
				Mode:    tarMode(fi.Mode()),
				ModTime: fi.ModTime(),
				Uname:   "root",
				Gname:   "root",
				Format:  tar.FormatPAX,
			}
			switch {
			case fi.IsDir():
				hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
				t.Dirs++
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return &SourceError{fmt.Errorf("reading symlink %s: %w", p, err)}
				}
				hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
				t.Links++
			case fi.Mode().IsRegular():
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
					key := devIno{uint64(st.Dev), st.Ino}
					if first, ok := links[key]; ok {
						hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
						t.Files++
						return tw.WriteHeader(hdr)
					}
					links[key] = name
				}
				hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
				if err := s.writeFile(tw, hdr, p, buf); err != nil {
					return err
				}
				t.Files++
				t.Bytes += hdr.Size
				return nil
			default:
				if s.Warn != nil {
					s.Warn(fmt.Sprintf("skipping %s: not a regular file, directory or symlink", p))
				}
				return nil
			}
			return tw.WriteHeader(hdr)
		})
		if err != nil {
			return t, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: DoneMarker, Typeflag: tar.TypeReg, Mode: 0o600, ModTime: time.Now(), Format: tar.FormatPAX}); err != nil {
		return t, err
	}
	return t, tw.Close()
}

// writeFile sends one regular file's header and exactly hdr.Size bytes.
func (s *Sender) writeFile(tw *tar.Writer, hdr *tar.Header, p string, buf []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return &SourceError{fmt.Errorf("reading %s: %w", p, err)}
	}
	defer f.Close()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	var r io.Reader = io.LimitReader(f, hdr.Size)
	if s.Progress != nil {
		r = &countingReader{r: r, fn: s.Progress}
	}
	n, err := copyBuffer(tw, r, buf)
	if err != nil {
		return err
	}
	if n != hdr.Size {
		return &SourceError{fmt.Errorf("reading %s: it shrank while being copied (%d of %d bytes)", p, n, hdr.Size)}
	}
	return nil
}

// copyBuffer is io.CopyBuffer that tells read errors (the host's files)
// from write errors (the stream).
func copyBuffer(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, &SourceError{rerr}
		}
	}
}

type countingReader struct {
	r  io.Reader
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.fn(int64(n))
	}
	return n, err
}

// tarMode is the tar header mode of m: permissions plus setuid, setgid and
// sticky.
func tarMode(m fs.FileMode) int64 {
	v := int64(m.Perm())
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
