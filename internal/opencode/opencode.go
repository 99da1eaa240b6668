// Package opencode is the contract between bangerd and the opencode server of banger's images: its port, where each VM's password goes, and how an image says it takes one.
package opencode

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/runner"
)

// Port is the guest TCP port the opencode server listens on.
const Port = 4096

// User is the basic-auth user of the server.
const User = "opencode"

// EnvFile is the file, in a VM's root disk, that bangerd writes with the
// VM's OPENCODE_SERVER_PASSWORD. An image's service reads it and does not
// start without it, so a server never runs open by mistake.
const EnvFile = agent.OpencodeEnvFile

// Where images start the server: a systemd unit (Debian) or a runit
// service (Void). Either one takes a per-VM password when it names EnvFile.
const (
	SystemdUnit = "/etc/systemd/system/opencode-server.service"
	RunitRun    = "/etc/sv/opencode-server/run"
)

// PasswordFile holds a VM's password in the VM's own directory (0600).
const PasswordFile = "opencode-password"

// Takes reports whether the image in the ext4 file root runs an opencode
// server that reads its password from EnvFile.
func Takes(ctx context.Context, r runner.Runner, root string) (bool, error) {
	key := fileKey(root)
	if v, ok := takes.Load(key); ok {
		return v.(bool), nil
	}
	remember := func(v bool) bool {
		if key != "" {
			takes.Store(key, v)
		}
		return v
	}
	for _, p := range []string{SystemdUnit, RunitRun} {
		b, err := ext4.ReadFile(ctx, r, root, p)
		if err != nil {
			return false, fmt.Errorf("reading %s from %s: %w", p, root, err)
		}
		if strings.Contains(string(b), EnvFile) {
			return remember(true), nil
		}
	}
	return remember(false), nil
}

// takes holds Takes's answers by image file (fileKey): a create reads its
// image's answer without running debugfs (twice for an image without a
// server), which would cost each create a few milliseconds, more on a
// larger filesystem.
var takes sync.Map

// fileKey names the content of the file at path as the filesystem knows
// it (path, device, inode, size, modification and change times), "" when
// it cannot be read.
func fileKey(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return ""
	}
	id := disk.FileIdentity(fi)
	if id == "" {
		return ""
	}
	return abs + "\x00" + id
}

// NewPassword returns a fresh random password.
func NewPassword() (string, error) {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making an opencode password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Env is the content of EnvFile for password pw.
func Env(pw string) []byte { return agent.OpencodeEnv(pw) }

// Install gives the VM whose root disk is root and whose directory is dir
// its own password: written into the disk's EnvFile (debugfs, no mount)
// and kept in dir/PasswordFile.
func Install(ctx context.Context, r runner.Runner, root, dir, pw string) error {
	if err := ext4.PutFile(ctx, r, root, EnvFile, Env(pw), 0o600); err != nil {
		return err
	}
	return Keep(dir, pw)
}

// Keep records pw as the password of the VM whose directory is dir, for a
// guest that gets it from its agent (a disk bangerd cannot write into: a
// qcow2 overlay, or the copy of a running guest's).
func Keep(dir, pw string) error {
	return os.WriteFile(filepath.Join(dir, PasswordFile), []byte(pw+"\n"), 0o600)
}

// Password returns the password kept in a VM's directory, or "" when its
// image runs no opencode server that takes one.
func Password(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, PasswordFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
