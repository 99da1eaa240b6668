// Package workseed builds the work-seed: the ext4 image each VM's own /root disk is cloned from.
package workseed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/runner"
)

// Size is the size of the work-seed image; VMs grow their clone (to 16G
// by default).
const Size = "64M"

// mkfsOptions make the seed a filesystem for the size VMs grow it to, not
// for its own 64M: mkfs.ext4 would pick its "small" type there (1 KiB
// blocks, an inode every 4 KiB), which a grown /root keeps: 6% of a 16G
// disk in inode tables. 4 KiB blocks and an inode every 8 KiB of the seed
// give a grown 16G /root 15.7G of room and a million inodes (one every
// 16 KiB, ext4's default).
var mkfsOptions = []string{"-T", "default", "-i", "8192"}

const bashrc = `# Written by banger.
[ -z "$PS1" ] && return
HISTCONTROL=ignoreboth
HISTSIZE=10000
shopt -s histappend checkwinsize
PS1='\[\e[1;32m\]\u@\h\[\e[0m\]:\[\e[1;34m\]\w\[\e[0m\]\$ '
alias ls='ls --color=auto'
alias ll='ls -alF'
export EDITOR=vi
`

const profile = `# Written by banger.
if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then
	. "$HOME/.bashrc"
fi
`

const tmuxConf = `# Written by banger.
set -g default-terminal "screen-256color"
set -g history-limit 50000
set -g mouse on
set -sg escape-time 10
`

// Build writes the work-seed ext4 image to out: the contents of a
// VM's /root disk, with authorizedKey as root's only SSH key. It needs no
// root: the files are written as the caller, then debugfs makes them
// root's inside the image (sshd's StrictModes wants that).
func Build(ctx context.Context, r runner.Runner, authorizedKey []byte, out string) error {
	if len(authorizedKey) == 0 {
		return errors.New("building work-seed: empty authorized key: pass the bundle's id_ed25519.pub")
	}
	if authorizedKey[len(authorizedKey)-1] != '\n' {
		authorizedKey = append(authorizedKey, '\n')
	}
	dir, err := os.MkdirTemp("", "banger-work-seed-")
	if err != nil {
		return fmt.Errorf("building work-seed: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("building work-seed: %w", err)
	}
	seed := ext4.Tree{Dir: dir}
	files := []struct {
		rel, content string
		mode         os.FileMode
	}{
		{".ssh/authorized_keys", string(authorizedKey), 0o600},
		{".bashrc", bashrc, 0o644},
		{".profile", profile, 0o644},
		{".tmux.conf", tmuxConf, 0o644},
	}
	for _, f := range files {
		if err := seed.Write(f.rel, f.mode, f.content); err != nil {
			return fmt.Errorf("building work-seed: writing %s: %w", f.rel, err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, ".ssh"), 0o700); err != nil {
		return fmt.Errorf("building work-seed: %w", err)
	}
	tmp := out + ".tmp"
	if err := ext4.Make(ctx, r, dir, "work", tmp, Size, false, mkfsOptions...); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("building work-seed: %w", err)
	}
	// mkfs.ext4 -d gives the root directory mode 0755 (/root is 0700) and
	// every file the caller's uid: make them root's.
	if err := ext4.OwnByRoot(ctx, r, tmp, dir, "sif / mode 040700"); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("building work-seed: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("building work-seed: %w", err)
	}
	return nil
}
