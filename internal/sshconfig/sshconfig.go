// Package sshconfig writes OpenSSH client configuration for banger's VMs and adds or removes its Include line in the user's ~/.ssh/config.
package sshconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/atomicfile"
)

// Host is one VM as ssh should reach it.
type Host struct {
	Name       string // the VM's name; its block also matches NAME.vm
	IP         string
	User       string
	KeyPath    string // the bundle's private key
	KnownHosts string // banger's known_hosts, where bangerd pins the guest's host key
	// HostKeyAlias is the name the pin is recorded under (NAME.vm). ssh
	// looks the key up under it whether the user typed NAME, NAME.vm or
	// the IP, so one pin serves every spelling.
	HostKeyAlias string
}

// Header starts every file Render writes.
const Header = "# Written by banger ssh-config from bangerd's VMs; banger rewrites this file, so do not edit it.\n"

// Render returns the ssh_config blocks of hosts, in order.
func Render(hosts []Host) []byte {
	var b bytes.Buffer
	b.WriteString(Header)
	for _, h := range hosts {
		user := h.User
		if user == "" {
			user = "root"
		}
		alias := h.HostKeyAlias
		if alias == "" {
			alias = h.Name + ".vm"
		}
		fmt.Fprintf(&b, "\nHost %s %s.vm\n", h.Name, h.Name)
		fmt.Fprintf(&b, "  HostName %s\n", h.IP)
		fmt.Fprintf(&b, "  User %s\n", user)
		fmt.Fprintf(&b, "  IdentityFile %s\n", pathArg(h.KeyPath))
		b.WriteString("  IdentitiesOnly yes\n")
		fmt.Fprintf(&b, "  UserKnownHostsFile %s\n", pathArg(h.KnownHosts))
		b.WriteString("  StrictHostKeyChecking yes\n")
		fmt.Fprintf(&b, "  HostKeyAlias %s\n", alias)
		// The pin is bangerd's: ssh must neither add nor update keys in it,
		// nor look the address up under another name.
		b.WriteString("  UpdateHostKeys no\n")
		b.WriteString("  CheckHostIP no\n")
	}
	return b.Bytes()
}

// pathArg writes a path as an ssh_config argument: % doubled (ssh expands
// %-tokens in these paths) and quoted when it holds a space or a quote.
func pathArg(p string) string {
	p = strings.ReplaceAll(p, "%", "%%")
	if !strings.ContainsAny(p, " \t\"'\\") {
		return p
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(p) + `"`
}

// IncludeLine is the line that includes path from ~/.ssh/config.
func IncludeLine(path string) string {
	return "Include " + pathArg(path)
}

// lines splits data into lines that keep their endings.
func lines(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			out = append(out, data)
			break
		}
		out = append(out, data[:i+1])
		data = data[i+1:]
	}
	return out
}

func isLine(l []byte, line string) bool {
	return string(bytes.TrimSpace(l)) == line
}

// AddInclude returns config with line as its first line, or config itself
// (and false) when line is already there. The line goes first because an
// Include below a Host or Match block would apply only inside it, and
// because the first value ssh reads for an option wins. It ends as the
// file's first line does (CRLF or LF); nothing else changes.
func AddInclude(config []byte, line string) ([]byte, bool) {
	ls := lines(config)
	for _, l := range ls {
		if isLine(l, line) {
			return config, false
		}
	}
	eol := "\n"
	if len(ls) > 0 && bytes.HasSuffix(ls[0], []byte("\r\n")) {
		eol = "\r\n"
	}
	out := make([]byte, 0, len(config)+len(line)+2)
	out = append(out, line...)
	out = append(out, eol...)
	return append(out, config...), true
}

// RemoveInclude returns config without its lines equal to line, and
// whether there were any; every other byte stays.
func RemoveInclude(config []byte, line string) ([]byte, bool) {
	var out []byte
	removed := false
	for _, l := range lines(config) {
		if isLine(l, line) {
			removed = true
			continue
		}
		out = append(out, l...)
	}
	if !removed {
		return config, false
	}
	if out == nil {
		out = []byte{}
	}
	return out, true
}

// resolve follows a symlinked config (a dotfiles checkout, say) so that
// the edit lands in the real file and the link stays.
func resolve(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	switch {
	case err == nil:
		return real, nil
	case errors.Is(err, fs.ErrNotExist):
		if _, lerr := os.Lstat(path); lerr == nil {
			return "", fmt.Errorf("%s is a symlink to a missing file: fix the link or remove it", path)
		}
		return path, nil
	default:
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
}

// Install adds line to the ssh config at path, creating it (0600, its
// directory 0700) when missing and keeping an existing file's mode. It
// reports whether the file changed.
func Install(path, line string) (bool, error) {
	return edit(path, func(b []byte) ([]byte, bool) { return AddInclude(b, line) }, true)
}

// Uninstall removes line from the ssh config at path; a missing file or
// line changes nothing.
func Uninstall(path, line string) (bool, error) {
	return edit(path, func(b []byte) ([]byte, bool) { return RemoveInclude(b, line) }, false)
}

func edit(path string, change func([]byte) ([]byte, bool), create bool) (bool, error) {
	real, err := resolve(path)
	if err != nil {
		return false, err
	}
	mode := fs.FileMode(0o600)
	data, err := os.ReadFile(real)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !create {
			return false, nil
		}
		if err := os.MkdirAll(filepath.Dir(real), 0o700); err != nil {
			return false, fmt.Errorf("making %s: %w", filepath.Dir(real), err)
		}
	case err != nil:
		return false, fmt.Errorf("reading %s: %w", real, err)
	default:
		fi, err := os.Stat(real)
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", real, err)
		}
		mode = fi.Mode().Perm()
	}
	out, changed := change(data)
	if !changed {
		return false, nil
	}
	if err := atomicfile.Write(real, out, mode); err != nil {
		return false, err
	}
	return true, nil
}
