// Package ext4 makes and edits ext4 images without mounting them: mkfs.ext4 -d from a directory tree, and debugfs to read, write and chown inside.
package ext4

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// ReadFile returns the content of the file at the absolute path name inside
// the ext4 image at img, read with debugfs; a missing file reads as empty.
func ReadFile(ctx context.Context, r runner.Runner, img, name string) ([]byte, error) {
	if strings.ContainsAny(name, " \t\n\"\\") {
		return nil, fmt.Errorf("reading %s from %s: the path has a space, quote or backslash", name, img)
	}
	out, err := r.Run(ctx, "debugfs", "-R", "cat "+name, img)
	if err != nil {
		return nil, fmt.Errorf("reading %s from %s: %w", name, img, err)
	}
	return out, nil
}

// PutFile writes data to the absolute path name inside the ext4 image at
// img, owned by root with mode perm, creating missing parent directories
// (root-owned). It uses debugfs, so the image is never mounted; it must not
// be in use. The content is read back to check it.
func PutFile(ctx context.Context, r runner.Runner, img, name string, data []byte, perm os.FileMode) error {
	fail := func(err error) error { return fmt.Errorf("writing %s into %s: %w", name, img, err) }
	if !path.IsAbs(name) || path.Clean(name) != name || name == "/" || strings.ContainsAny(name, " \t\n\"\\") {
		return fail(fmt.Errorf("not a clean absolute path without spaces or quotes"))
	}
	src, err := os.CreateTemp("", "banger-putfile-")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(src.Name())
	if _, err := src.Write(data); err != nil {
		src.Close()
		return fail(err)
	}
	if err := src.Close(); err != nil {
		return fail(err)
	}
	var cmds, owns []string
	for d := path.Dir(name); d != "/"; d = path.Dir(d) {
		// mkdir fails harmlessly when d exists.
		cmds = append([]string{"mkdir " + d}, cmds...)
		owns = append(owns, "sif "+d+" uid 0", "sif "+d+" gid 0")
	}
	// rm fails harmlessly when name does not exist yet.
	cmds = append(cmds, "rm "+name, "write "+src.Name()+" "+name,
		fmt.Sprintf("sif %s mode 0%o", name, 0o100000|perm.Perm()), "sif "+name+" uid 0", "sif "+name+" gid 0")
	cmds = append(cmds, owns...)
	if _, err := Debugfs(ctx, r, img, cmds); err != nil {
		return fail(err)
	}
	// debugfs goes on after a failed command (and exits 0): check the result.
	got, err := ReadFile(ctx, r, img, name)
	if err != nil {
		return fail(fmt.Errorf("reading it back: %w", err))
	}
	if !bytes.Equal(got, data) {
		return fail(fmt.Errorf("debugfs did not write it (read back %d bytes, want %d)", len(got), len(data)))
	}
	return nil
}

// Debugfs runs debugfs commands, one per line, on the unmounted ext4 image
// img, writable, and returns debugfs's output. debugfs goes on after a
// failed command and exits 0: callers check the result they wanted.
func Debugfs(ctx context.Context, r runner.Runner, img string, cmds []string) ([]byte, error) {
	script, err := os.CreateTemp("", "banger-debugfs-")
	if err != nil {
		return nil, fmt.Errorf("running debugfs on %s: %w", img, err)
	}
	defer os.Remove(script.Name())
	_, err = script.WriteString(strings.Join(cmds, "\n") + "\n")
	if cerr := script.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("running debugfs on %s: %w", img, err)
	}
	out, err := r.Run(ctx, "debugfs", "-w", "-f", script.Name(), img)
	if err != nil {
		return out, fmt.Errorf("running debugfs on %s: %w", img, err)
	}
	return out, nil
}
