package xbps

import (
	"path"
	"strings"
)

// A pkgver is "<name>-<version>_<revision>", e.g. "glibc-2.39_1"; version
// strings and dependency patterns follow xbps: "glibc>=2.32_1",
// "foo>1.0<2.0", "foo-1.2_3" (exact) and globs such as "foo-[0-9]*".

// SplitPkgver splits a pkgver into its name and its version with revision,
// e.g. "glibc-2.39_1" into "glibc" and "2.39_1". ok is false when s is not a
// pkgver: the part after the last "-" must hold a digit before an "_" that is
// followed by a revision made only of digits.
func SplitPkgver(s string) (name, version string, ok bool) {
	i := strings.LastIndexByte(s, '-')
	if i <= 0 || i == len(s)-1 {
		return "", "", false
	}
	v := s[i+1:]
	u := strings.LastIndexByte(v, '_')
	if u <= 0 || u == len(v)-1 || strings.ContainsAny(v[:u], "_") {
		return "", "", false
	}
	for _, c := range v[u+1:] {
		if c < '0' || c > '9' {
			return "", "", false
		}
	}
	if !strings.ContainsAny(v[:u], "0123456789") {
		return "", "", false
	}
	return s[:i], v, true
}

// patternChars are the characters that make a dependency a pattern rather
// than a name or a pkgver.
const patternChars = "<>*?[]"

// PatternName returns the package name a dependency pattern is about:
// "glibc>=2.32_1" -> "glibc", "foo-[0-9]*" -> "foo", "foo-1.0_1" -> "foo",
// "foo" -> "foo".
func PatternName(p string) string {
	if i := strings.IndexAny(p, patternChars); i >= 0 {
		return strings.TrimSuffix(p[:i], "-")
	}
	if name, _, ok := SplitPkgver(p); ok {
		return name
	}
	return p
}

// Match reports whether the pkgver pkg satisfies the dependency pattern p.
// A pattern without version ("foo") matches any version of foo.
func Match(pkg, p string) bool {
	if pkg == p {
		return true
	}
	name, version, ok := SplitPkgver(pkg)
	if !ok {
		return false
	}
	switch {
	case strings.ContainsAny(p, "<>"):
		return matchRelational(name, version, p)
	case strings.ContainsAny(p, "*?[]"):
		ok, err := path.Match(p, pkg)
		return err == nil && ok
	case strings.Contains(p, "-"):
		if _, _, isPkgver := SplitPkgver(p); isPkgver {
			return false // an exact pkgver, and not this one
		}
	}
	return name == p
}

// matchRelational matches "name>=1.0", "name<2", "name>1.0<2.0" and the like.
func matchRelational(name, version, p string) bool {
	i := strings.IndexAny(p, "<>")
	if p[:i] != name {
		return false
	}
	rest := p[i:]
	op, n := relOp(rest)
	if n == 0 {
		return false
	}
	rest = rest[n:]
	lower := rest
	// A lower bound may be followed by an upper one: "foo>=1.0<2.0".
	if op == ">" || op == ">=" {
		if j := strings.IndexByte(rest, '<'); j >= 0 {
			op2, n2 := relOp(rest[j:])
			if n2 == 0 || !compareOp(CompareVersions(version, rest[j+n2:]), op2) {
				return false
			}
			lower = rest[:j]
		}
	}
	return compareOp(CompareVersions(version, lower), op)
}

// relOp reads the comparison operator at the start of s.
func relOp(s string) (string, int) {
	for _, op := range []string{"<=", ">=", "==", "!=", "<", ">"} {
		if strings.HasPrefix(s, op) {
			return op, len(op)
		}
	}
	return "", 0
}

func compareOp(c int, op string) bool {
	switch op {
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	case "==":
		return c == 0
	case "!=":
		return c != 0
	}
	return false
}

// Version modifiers, ordered as xbps orders them: 1.0alpha < 1.0beta <
// 1.0pre = 1.0rc < 1.0 = 1.0pl.
const (
	modAlpha = -3
	modBeta  = -2
	modRC    = -1
	modDot   = 0
)

// parsedVersion is a version as a list of comparable numbers plus the
// revision after "_".
type parsedVersion struct {
	parts    []int
	revision int
}

func parseVersion(s string) parsedVersion {
	var v parsedVersion
	for len(s) > 0 {
		c := s[0]
		switch {
		case c >= '0' && c <= '9':
			n, i := 0, 0
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				if n < 1<<30 {
					n = n*10 + int(s[i]-'0')
				}
				i++
			}
			v.parts = append(v.parts, n)
			s = s[i:]
			continue
		case c == '_':
			n, i := 0, 1
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				if n < 1<<30 {
					n = n*10 + int(s[i]-'0')
				}
				i++
			}
			v.revision = n
			s = s[i:]
			continue
		}
		if m, n := modifier(s); n > 0 {
			v.parts = append(v.parts, m)
			s = s[n:]
			continue
		}
		if l := c | 0x20; l >= 'a' && l <= 'z' {
			// A lone letter counts as ".N": 1.2a is 1.2.0.1.
			v.parts = append(v.parts, modDot, int(l-'a')+1)
		}
		s = s[1:]
	}
	return v
}

func modifier(s string) (int, int) {
	l := strings.ToLower(s)
	for _, m := range []struct {
		s string
		v int
	}{{"alpha", modAlpha}, {"beta", modBeta}, {"pre", modRC}, {"rc", modRC}, {"pl", modDot}, {".", modDot}} {
		if strings.HasPrefix(l, m.s) {
			return m.v, len(m.s)
		}
	}
	return 0, 0
}

// CompareVersions compares two xbps versions (with or without "_revision")
// and returns -1, 0 or 1. Missing components count as 0, so 1.0 == 1.0.0;
// the revision decides last.
func CompareVersions(a, b string) int {
	va, vb := parseVersion(a), parseVersion(b)
	for i := 0; i < max(len(va.parts), len(vb.parts)); i++ {
		x, y := at(va.parts, i), at(vb.parts, i)
		if x != y {
			return sign(x - y)
		}
	}
	return sign(va.revision - vb.revision)
}

func at(p []int, i int) int {
	if i < len(p) {
		return p[i]
	}
	return 0
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
