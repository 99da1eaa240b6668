package xbps

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// InstallVars is what banger takes from a package's INSTALL script. xbps
// runs the script (and the triggers it names) as root inside the new
// system; banger never runs package code. It reads only the variables that
// xbps-src writes for the system-accounts and register-shell triggers.
type InstallVars struct {
	// Accounts are the system users the package needs (system_accounts).
	Accounts []Account
	// Groups are the system groups the package needs (system_groups).
	Groups []Group
	// Shells are login shells to list in /etc/shells (register_shell).
	Shells []string
}

// Account is one system user from system_accounts.
type Account struct {
	Name string
	// UID is the fixed uid the package asks for, or -1.
	UID int
	// Home, Shell, Descr and Groups come from <name>_homedir, _shell,
	// _descr and _groups; empty when unset.
	Home, Shell, Descr string
	Groups             []string
}

// Group is one system group from system_groups.
type Group struct {
	Name string
	// GID is the fixed gid the package asks for, or -1.
	GID int
}

// exportRE matches the lines xbps-src writes: export name="value", where
// the value has no quoting or expansion of its own.
var exportRE = regexp.MustCompile(`^export ([A-Za-z_][A-Za-z0-9_]*)="([^"$` + "`" + `\\]*)"$`)

var accountNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// ParseInstall reads the variables of an INSTALL script. Lines it does not
// know are ignored; a known variable with a malformed value is an error.
func ParseInstall(script []byte) (*InstallVars, error) {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		if m := exportRE.FindStringSubmatch(strings.TrimSpace(sc.Text())); m != nil {
			vars[m[1]] = m[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading INSTALL: %w", err)
	}
	iv := &InstallVars{}
	for _, f := range strings.Fields(vars["system_groups"]) {
		name, id, err := nameID(f)
		if err != nil {
			return nil, fmt.Errorf("reading INSTALL: system_groups: %w", err)
		}
		iv.Groups = append(iv.Groups, Group{Name: name, GID: id})
	}
	for _, f := range strings.Fields(vars["system_accounts"]) {
		name, id, err := nameID(f)
		if err != nil {
			return nil, fmt.Errorf("reading INSTALL: system_accounts: %w", err)
		}
		a := Account{Name: name, UID: id,
			Home:  vars[name+"_homedir"],
			Shell: vars[name+"_shell"],
			Descr: vars[name+"_descr"],
		}
		for _, s := range []string{a.Home, a.Shell} {
			if s != "" && !strings.HasPrefix(s, "/") || strings.ContainsAny(s, ":\n") {
				return nil, fmt.Errorf("reading INSTALL: account %s: invalid path %q", name, s)
			}
		}
		if strings.ContainsAny(a.Descr, ":\n") {
			return nil, fmt.Errorf("reading INSTALL: account %s: invalid description %q", name, a.Descr)
		}
		for _, g := range strings.Split(vars[name+"_groups"], ",") {
			if g = strings.TrimSpace(g); g == "" {
				continue
			}
			if !accountNameRE.MatchString(g) {
				return nil, fmt.Errorf("reading INSTALL: account %s: invalid group %q", name, g)
			}
			a.Groups = append(a.Groups, g)
		}
		iv.Accounts = append(iv.Accounts, a)
	}
	for _, s := range strings.Fields(vars["register_shell"]) {
		if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, ":") {
			return nil, fmt.Errorf("reading INSTALL: register_shell: invalid path %q", s)
		}
		iv.Shells = append(iv.Shells, s)
	}
	return iv, nil
}

// nameID parses "name" or "name:id".
func nameID(s string) (string, int, error) {
	name, idStr, hasID := strings.Cut(s, ":")
	if !accountNameRE.MatchString(name) {
		return "", 0, fmt.Errorf("invalid name %q", name)
	}
	if !hasID {
		return name, -1, nil
	}
	id, err := strconv.Atoi(idStr)
	if err != nil || id < 1 || id > 65533 {
		return "", 0, fmt.Errorf("%s: invalid id %q", name, idStr)
	}
	return name, id, nil
}
