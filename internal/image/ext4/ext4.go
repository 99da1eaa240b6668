package ext4

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// Make makes an ext4 image of size (e.g. "4G") at out, labelled label and
// filled from dir with mkfs.ext4 -d: no loop mount. out is created by the
// calling user first so that it keeps the caller's ownership. A root-owned
// tree (an image's) can only be read as root: privileged says so. extra are
// more mkfs.ext4 options (its -T, -i, -b).
func Make(ctx context.Context, r runner.Runner, dir, label, out, size string, privileged bool, extra ...string) error {
	if _, err := runner.LookPath("mkfs.ext4"); err != nil {
		return fmt.Errorf("making ext4 image %s: mkfs.ext4 is not installed: run 'apt-get install e2fsprogs'", out)
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("creating image %s: %w", out, err)
	}
	f.Close()
	run := r.Run
	if privileged {
		run = r.RunPrivileged
	}
	args := append([]string{"-q", "-F", "-d", dir, "-L", label, "-E", "root_owner=0:0"}, extra...)
	if _, err := run(ctx, "mkfs.ext4", append(args, out, size)...); err != nil {
		return fmt.Errorf("making ext4 image %s: %w", out, err)
	}
	return nil
}

// Tree is a directory of files, written as the calling user, that becomes
// (or is laid over) an image's tree.
type Tree struct {
	Dir string
}

// Write writes rel with mode (whatever the umask), making its parents.
func (o Tree) Write(rel string, mode os.FileMode, content string) error {
	p := filepath.Join(o.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		return err
	}
	return os.Chmod(p, mode) // beat the umask
}

// Symlink makes rel a symlink to target, replacing what was there.
func (o Tree) Symlink(rel, target string) error {
	p := filepath.Join(o.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	os.Remove(p)
	return os.Symlink(target, p)
}

// CopyFile copies src to rel with mode.
func (o Tree) CopyFile(rel string, mode os.FileMode, src string) error {
	p := filepath.Join(o.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// LinkOrCopy hard-links src (a cached binary on the same file system, saving
// a copy of hundreds of megabytes) or else copies it, to rel.
func (o Tree) LinkOrCopy(rel string, mode os.FileMode, src string) error {
	if fi, err := os.Stat(src); err == nil && fi.Mode().Perm() == mode {
		p := filepath.Join(o.Dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p)
		if os.Link(src, p) == nil {
			return nil
		}
	}
	return o.CopyFile(rel, mode, src)
}

// OwnByRoot makes every file that mkfs.ext4 -d copied from dir into img
// owned by root:root inside the image, then runs the extra debugfs commands,
// and checks the result: an unprivileged caller's files keep its uid.
func OwnByRoot(ctx context.Context, r runner.Runner, img, dir string, extra ...string) error {
	var rels []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.ContainsAny(rel, " \t\n\"\\") {
			return fmt.Errorf("file name %q is not one debugfs can take", rel)
		}
		rels = append(rels, "/"+rel)
		return nil
	})
	if err != nil {
		return fmt.Errorf("owning the files of %s by root: %w", img, err)
	}
	var cmds []string
	for _, rel := range rels {
		cmds = append(cmds, "sif "+rel+" uid 0", "sif "+rel+" gid 0")
	}
	if _, err := Debugfs(ctx, r, img, append(cmds, extra...)); err != nil {
		return fmt.Errorf("owning the files of %s by root: %w", img, err)
	}
	var stats []string
	for _, rel := range rels {
		stats = append(stats, "stat "+rel)
	}
	out, err := Debugfs(ctx, r, img, stats)
	if err != nil {
		return fmt.Errorf("checking the owners of the files of %s: %w", img, err)
	}
	if n := strings.Count(string(out), "User:     0   Group:     0 "); n != len(rels) {
		return fmt.Errorf("owning the files of %s by root: %d of %d are root's afterwards", img, n, len(rels))
	}
	return nil
}
