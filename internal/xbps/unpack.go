package xbps

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"howett.net/plist"
)

// Limits on what one package may make us write.
const (
	maxEntries     = 500_000
	maxFileSize    = 4 << 30
	maxTotalSize   = 16 << 30
	maxScriptSize  = 1 << 20
	maxFilesPlist  = 64 << 20
	maxPropsPlist  = 4 << 20
	maxSymlinkText = 4096
)

// Unpacked describes a package that Unpack extracted.
type Unpacked struct {
	// Pkgver is the pkgver in the package's props.plist.
	Pkgver string
	// Install is the package's ./INSTALL script, if it has one. banger never
	// runs it; see ParseInstall.
	Install []byte
	// Files counts the entries written.
	Files int
	// Bytes counts the regular-file bytes written.
	Bytes int64
}

// UnpackOptions tune Unpack.
type UnpackOptions struct {
	// Owners applies the archive's uid and gid to what is written (needs
	// root); otherwise everything belongs to the caller.
	Owners bool
}

// props is the part of a package's props.plist that is checked.
type props struct {
	Pkgver       string `plist:"pkgver"`
	Architecture string `plist:"architecture"`
}

// Unpack checks the .xbps file at file against p (size and sha256 from the
// index) and only then extracts it into root. Nothing is written when the
// check fails. The archive must start with the xbps metadata (./INSTALL and
// ./REMOVE optional, ./props.plist and ./files.plist required) and its
// props.plist must name p's pkgver. Entries must be relative ("./usr/bin/x"),
// must not contain "..", and are written through root, so that neither a
// name nor a symlink, a package's own or an earlier package's, can reach
// outside the tree. Device nodes and FIFOs are refused; a package needs none.
func Unpack(file string, p *Package, root *os.Root, opts UnpackOptions) (*Unpacked, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", p.Pkgver, err)
	}
	defer f.Close()
	if err := verifyOpen(f, p); err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", p.Pkgver, err)
	}
	dr, closeFn, err := decompress(io.LimitReader(f, p.Size))
	if err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", p.Pkgver, err)
	}
	defer closeFn()
	u := &unpacker{root: root, opts: opts, out: &Unpacked{}}
	if err := u.run(tar.NewReader(dr), p); err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", p.Pkgver, err)
	}
	return u.out, nil
}

type unpacker struct {
	root *os.Root
	opts UnpackOptions
	out  *Unpacked
	dirs []dirMode // applied at the end, so a read-only dir can be filled first
}

type dirMode struct {
	name string
	mode fs.FileMode
}

func (u *unpacker) run(tr *tar.Reader, p *Package) error {
	var haveProps, haveFiles bool
	var entries int
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		if entries++; entries > maxEntries {
			return fmt.Errorf("more than %d entries", maxEntries)
		}
		// The metadata comes first, in xbps' order.
		if !haveFiles {
			switch h.Name {
			case "./INSTALL":
				if haveProps || u.out.Install != nil {
					return errors.New("./INSTALL out of order")
				}
				b, err := readMember(tr, h, maxScriptSize)
				if err != nil {
					return err
				}
				u.out.Install = b
				continue
			case "./REMOVE":
				if haveProps {
					return errors.New("./REMOVE out of order")
				}
				if _, err := readMember(tr, h, maxScriptSize); err != nil {
					return err
				}
				continue
			case "./props.plist":
				if haveProps {
					return errors.New("./props.plist appears twice")
				}
				b, err := readMember(tr, h, maxPropsPlist)
				if err != nil {
					return err
				}
				var pr props
				if _, err := plist.Unmarshal(b, &pr); err != nil {
					return fmt.Errorf("parsing ./props.plist: %w", err)
				}
				if pr.Pkgver != p.Pkgver {
					return fmt.Errorf("./props.plist names %q, the index %q: refusing a package that is not the one asked for", pr.Pkgver, p.Pkgver)
				}
				u.out.Pkgver = pr.Pkgver
				haveProps = true
				continue
			case "./files.plist":
				if !haveProps {
					return errors.New("./files.plist before ./props.plist")
				}
				b, err := readMember(tr, h, maxFilesPlist)
				if err != nil {
					return err
				}
				var files map[string]any
				if _, err := plist.Unmarshal(b, &files); err != nil {
					return fmt.Errorf("parsing ./files.plist: %w", err)
				}
				haveFiles = true
				continue
			default:
				return fmt.Errorf("entry %q before ./props.plist and ./files.plist: not an xbps package", h.Name)
			}
		}
		n, err := u.entry(tr, h)
		if err != nil {
			return err
		}
		if total += n; total > maxTotalSize {
			return fmt.Errorf("more than %d bytes of files", int64(maxTotalSize))
		}
	}
	if !haveFiles {
		return errors.New("no ./props.plist and ./files.plist: not an xbps package")
	}
	// Deepest first, so that making a parent read-only comes last.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if err := u.root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("setting mode of %s: %w", d.name, err)
		}
	}
	u.out.Bytes = total
	return nil
}

// entryName turns an archive name into a path relative to the root; "" is
// the root itself.
func entryName(name string) (string, error) {
	if !strings.HasPrefix(name, "./") && name != "." {
		return "", fmt.Errorf("entry %q does not start with ./", name)
	}
	rel := strings.TrimPrefix(name, ".")
	rel = strings.Trim(rel, "/")
	if rel == "" {
		return "", nil
	}
	for _, el := range strings.Split(rel, "/") {
		if el == ".." || el == "." || el == "" {
			return "", fmt.Errorf("entry %q: refusing a name with %q in it", name, el)
		}
	}
	if strings.ContainsRune(rel, 0) {
		return "", fmt.Errorf("entry %q: NUL in name", name)
	}
	return rel, nil
}

// entry writes one archive entry and returns the bytes of file data written.
func (u *unpacker) entry(tr *tar.Reader, h *tar.Header) (int64, error) {
	name, err := entryName(h.Name)
	if err != nil {
		return 0, err
	}
	if name == "" {
		return 0, nil // "./": the root exists
	}
	mode := h.FileInfo().Mode()
	perm := mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if dir := path.Dir(name); dir != "." {
		if err := u.root.MkdirAll(dir, 0o755); err != nil {
			return 0, fmt.Errorf("creating parent of %s: %w", name, err)
		}
	}
	var n int64
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := u.root.Lstat(name); err == nil && !fi.IsDir() {
			if fi.Mode()&fs.ModeSymlink == 0 {
				if err := u.root.Remove(name); err != nil {
					return 0, fmt.Errorf("replacing %s with a directory: %w", name, err)
				}
			}
		}
		if err := u.root.MkdirAll(name, 0o755); err != nil {
			return 0, fmt.Errorf("creating directory %s: %w", name, err)
		}
		u.dirs = append(u.dirs, dirMode{name, perm})
		u.out.Files++
		return 0, u.own(name, h)
	case tar.TypeReg:
		if h.Size < 0 || h.Size > maxFileSize {
			return 0, fmt.Errorf("entry %s: %d bytes is more than the %d allowed", name, h.Size, int64(maxFileSize))
		}
		if err := u.clear(name); err != nil {
			return 0, err
		}
		w, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, fmt.Errorf("creating %s: %w", name, err)
		}
		n, err = io.Copy(w, io.LimitReader(tr, h.Size))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err == nil && n != h.Size {
			err = fmt.Errorf("short archive: %d of %d bytes", n, h.Size)
		}
		if err != nil {
			return 0, fmt.Errorf("writing %s: %w", name, err)
		}
		if err := u.own(name, h); err != nil {
			return 0, err
		}
		// After chown, which clears set-id bits.
		if err := u.root.Chmod(name, perm); err != nil {
			return 0, fmt.Errorf("setting mode of %s: %w", name, err)
		}
	case tar.TypeSymlink:
		if h.Linkname == "" || len(h.Linkname) > maxSymlinkText || strings.ContainsRune(h.Linkname, 0) {
			return 0, fmt.Errorf("entry %s: invalid symlink target %q", name, h.Linkname)
		}
		if err := u.clear(name); err != nil {
			return 0, err
		}
		if err := u.root.Symlink(h.Linkname, name); err != nil {
			return 0, fmt.Errorf("creating symlink %s: %w", name, err)
		}
		if err := u.ownLink(name, h); err != nil {
			return 0, err
		}
	case tar.TypeLink:
		target, err := entryName(h.Linkname)
		if err != nil || target == "" {
			return 0, fmt.Errorf("entry %s: invalid hard link target %q", name, h.Linkname)
		}
		if fi, err := u.root.Lstat(target); err != nil || !fi.Mode().IsRegular() {
			return 0, fmt.Errorf("entry %s: hard link to %s, which the package has not written as a regular file", name, target)
		}
		if err := u.clear(name); err != nil {
			return 0, err
		}
		if err := u.root.Link(target, name); err != nil {
			return 0, fmt.Errorf("creating hard link %s: %w", name, err)
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return 0, fmt.Errorf("entry %s: refusing a device node or FIFO", name)
	default:
		return 0, fmt.Errorf("entry %s: unsupported type %q", name, h.Typeflag)
	}
	u.out.Files++
	return n, nil
}

// clear removes whatever a new non-directory entry replaces (an earlier
// package's file or symlink), refusing to replace a non-empty directory.
func (u *unpacker) clear(name string) error {
	fi, err := u.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", name, err)
	}
	if err := u.root.Remove(name); err != nil {
		if fi.IsDir() {
			return fmt.Errorf("replacing directory %s with a file: %w", name, err)
		}
		return fmt.Errorf("replacing %s: %w", name, err)
	}
	return nil
}

func (u *unpacker) own(name string, h *tar.Header) error {
	if !u.opts.Owners {
		return nil
	}
	if err := u.root.Chown(name, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	return nil
}

func (u *unpacker) ownLink(name string, h *tar.Header) error {
	if !u.opts.Owners {
		return nil
	}
	if err := u.root.Lchown(name, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	return nil
}
