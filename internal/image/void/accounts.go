package void

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/xbps"
)

// rootShell is root's login shell in the image; /bin/sh stays what the
// packages made it (dash, through its alternative).
const rootShell = "/bin/bash"

// table is an /etc/passwd or /etc/group file: lines of colon-separated fields.
type table struct {
	lines [][]string
}

func parseTable(b []byte, fields int) (*table, error) {
	t := &table{}
	for i, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Split(l, ":")
		if len(f) != fields {
			return nil, fmt.Errorf("line %d has %d fields, want %d", i+1, len(f), fields)
		}
		t.lines = append(t.lines, f)
	}
	return t, nil
}

func (t *table) find(name string) []string {
	for _, l := range t.lines {
		if l[0] == name {
			return l
		}
	}
	return nil
}

func (t *table) idUsed(id int) bool {
	s := strconv.Itoa(id)
	for _, l := range t.lines {
		if l[2] == s {
			return true
		}
	}
	return false
}

// freeID returns want when it is free, else the highest free system id
// below 1000, as useradd -r picks them.
func (t *table) freeID(want int) (int, error) {
	if want > 0 && !t.idUsed(want) {
		return want, nil
	}
	for id := 999; id >= 100; id-- {
		if !t.idUsed(id) {
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free system id")
}

func (t *table) bytes() []byte {
	var b strings.Builder
	for _, l := range t.lines {
		b.WriteString(strings.Join(l, ":"))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// setupAccounts writes /etc/passwd, /etc/group, /etc/shadow and
// /etc/shells: base-files' users and groups, the system accounts and groups
// the packages' INSTALL scripts ask for, bash as root's shell, and every
// password locked ("*": root logs in with the bundle's key only; "*" rather
// than "!", which sshd takes for a locked account and refuses).
func setupAccounts(root *os.Root, vars []*xbps.InstallVars) error {
	read := func(rel, def string, fields int) (*table, error) {
		b, err := readIn(root, rel)
		if err != nil {
			return nil, err
		}
		if b == nil {
			b = []byte(def)
		}
		t, err := parseTable(b, fields)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", rel, err)
		}
		return t, nil
	}
	passwd, err := read("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 7)
	if err != nil {
		return err
	}
	group, err := read("etc/group", "root:x:0:\n", 4)
	if err != nil {
		return err
	}
	addGroup := func(name string, gid int) (string, error) {
		if g := group.find(name); g != nil {
			return g[2], nil
		}
		id, err := group.freeID(gid)
		if err != nil {
			return "", fmt.Errorf("adding group %s: %w", name, err)
		}
		group.lines = append(group.lines, []string{name, "x", strconv.Itoa(id), ""})
		return strconv.Itoa(id), nil
	}
	var shells []string
	for _, iv := range vars {
		for _, g := range iv.Groups {
			if _, err := addGroup(g.Name, g.GID); err != nil {
				return err
			}
		}
		shells = append(shells, iv.Shells...)
	}
	for _, iv := range vars {
		for _, a := range iv.Accounts {
			if passwd.find(a.Name) != nil {
				continue
			}
			uid, err := passwd.freeID(a.UID)
			if err != nil {
				return fmt.Errorf("adding user %s: %w", a.Name, err)
			}
			gid, err := addGroup(a.Name, uid)
			if err != nil {
				return err
			}
			home, shell, descr := a.Home, a.Shell, a.Descr
			if home == "" {
				home = "/var/empty"
			}
			if shell == "" {
				shell = "/bin/false"
			}
			if descr == "" {
				descr = a.Name + " unprivileged user"
			}
			passwd.lines = append(passwd.lines, []string{a.Name, "x", strconv.Itoa(uid), gid, descr, home, shell})
			for _, g := range a.Groups {
				if _, err := addGroup(g, -1); err != nil {
					return err
				}
				l := group.find(g)
				members := slices.DeleteFunc(strings.Split(l[3], ","), func(s string) bool { return s == "" })
				if !slices.Contains(members, a.Name) {
					l[3] = strings.Join(append(members, a.Name), ",")
				}
			}
		}
	}
	r := passwd.find("root")
	if r == nil {
		return fmt.Errorf("etc/passwd has no root")
	}
	if _, err := root.Stat(strings.TrimPrefix(rootShell, "/")); err != nil {
		return fmt.Errorf("root's shell %s is not in the image (package bash): %w", rootShell, err)
	}
	r[6] = rootShell

	var shadow strings.Builder
	for _, l := range passwd.lines {
		// name:password:lastchange:min:max:warn:inactive:expire:
		fmt.Fprintf(&shadow, "%s:*:19000:0:99999:7:::\n", l[0])
	}
	b, err := readIn(root, "etc/shells")
	if err != nil {
		return err
	}
	have := string(b)
	for _, s := range append(shells, rootShell) {
		if !slices.Contains(strings.Split(have, "\n"), s) {
			have = strings.TrimRight(have, "\n") + "\n" + s + "\n"
		}
	}
	for _, f := range []struct {
		rel  string
		mode os.FileMode
		data []byte
	}{
		{"etc/passwd", 0o644, passwd.bytes()},
		{"etc/group", 0o644, group.bytes()},
		{"etc/shadow", 0o600, []byte(shadow.String())},
		{"etc/shells", 0o644, []byte(strings.TrimLeft(have, "\n"))},
	} {
		if err := writeIn(root, f.rel, f.mode, f.data); err != nil {
			return err
		}
	}
	return nil
}
