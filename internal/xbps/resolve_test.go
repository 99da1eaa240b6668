package xbps

import (
	"errors"
	"strings"
	"testing"
)

// testIndex builds an index from "pkgver: dep dep ..." lines; a dependency
// written "+name-ver_rev" is a virtual package the line's package provides.
func testIndex(t *testing.T, lines ...string) *Index {
	t.Helper()
	idx := &Index{Packages: map[string]*Package{}}
	for _, l := range lines {
		pkgver, deps, _ := strings.Cut(l, ":")
		name, _, ok := SplitPkgver(pkgver)
		if !ok {
			t.Fatalf("bad pkgver %q", pkgver)
		}
		p := &Package{Name: name, Pkgver: pkgver, Arch: "x86_64", SHA256: sha, Size: 1}
		for _, d := range strings.Fields(deps) {
			if v, ok := strings.CutPrefix(d, "+"); ok {
				p.Provides = append(p.Provides, v)
			} else {
				p.RunDepends = append(p.RunDepends, d)
			}
		}
		idx.Packages[name] = p
	}
	return idx
}

func pkgvers(ps []*Package) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Pkgver)
	}
	return strings.Join(s, " ")
}

func TestResolve(t *testing.T) {
	repo := []string{
		"glibc-2.39_1:",
		"ncurses-libs-6.5_1: glibc>=2.32_1",
		"bash-5.2.32_1: glibc>=2.38_1 ncurses-libs>=6.0_1 +sh-0_1",
		"dash-0.5.12_1: glibc>=2.32_1 +sh-0_1",
		"nawk-20240728_1: glibc>=2.0_1 +awk-0_1",
		"gawk-5.3.0_1: glibc>=2.0_1 +awk-0_1",
		"runit-2.1.2_1: glibc>=2.32_1",
		"containerd-1.7.20_1: glibc>=2.32_1 runc>=1.1_1",
		"runc-1.1.14_1: glibc",
		"docker-27.3.1_1: containerd>=1.7_1 containerd<2.0 iptables-[0-9]* awk",
		"iptables-1.8.10_1: glibc",
		"old-1.0_1: glibc<2.30",
		"needs-sh-1.0_1: sh",
		"cycle-a-1.0_1: cycle-b",
		"cycle-b-1.0_1: cycle-a glibc",
		"exact-1.0_1: runit-2.1.2_1",
		"wrong-exact-1.0_1: runit-2.1.2_2",
		"needs-virtual-version-1.0_1: awk>=1.0",
	}
	for _, tc := range []struct {
		name string
		want []string // pkgvers in install order, or an error substring
		err  string
	}{
		{name: "glibc", want: []string{"glibc-2.39_1"}},
		{name: "bash", want: []string{"glibc-2.39_1", "ncurses-libs-6.5_1", "bash-5.2.32_1"}},
		{name: "bash>=5.0", want: []string{"glibc-2.39_1", "ncurses-libs-6.5_1", "bash-5.2.32_1"}},
		{name: "bash<5.0", err: "package bash<5.0 was asked for, but the repository has only bash-5.2.32_1"},
		// A virtual dependency: the first provider by name.
		{name: "docker", want: []string{"glibc-2.39_1", "runc-1.1.14_1", "containerd-1.7.20_1", "iptables-1.8.10_1", "gawk-5.3.0_1", "docker-27.3.1_1"}},
		// sh is provided by bash, already chosen: dash is not pulled in.
		{name: "bash needs-sh", want: []string{"glibc-2.39_1", "ncurses-libs-6.5_1", "bash-5.2.32_1", "needs-sh-1.0_1"}},
		{name: "nawk docker", want: []string{"glibc-2.39_1", "nawk-20240728_1", "runc-1.1.14_1", "containerd-1.7.20_1", "iptables-1.8.10_1", "docker-27.3.1_1"}},
		{name: "old", err: "old-1.0_1 needs glibc<2.30, but the repository has only glibc-2.39_1"},
		{name: "nonexistent", err: "package nonexistent was asked for, but no package in the repository provides it"},
		{name: "cycle-a", want: []string{"glibc-2.39_1", "cycle-b-1.0_1", "cycle-a-1.0_1"}},
		{name: "exact", want: []string{"glibc-2.39_1", "runit-2.1.2_1", "exact-1.0_1"}},
		{name: "wrong-exact", err: "wrong-exact-1.0_1 needs runit-2.1.2_2, but the repository has only runit-2.1.2_1"},
		// Virtual packages of version 0 do not satisfy a versioned dependency.
		{name: "needs-virtual-version", err: "needs-virtual-version-1.0_1 needs awk>=1.0, but no package"},
		{name: "awk", want: []string{"glibc-2.39_1", "gawk-5.3.0_1"}},
	} {
		got, err := testIndex(t, repo...).Resolve(strings.Fields(tc.name)...)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Resolve(%s) = %s, %v, want error %q", tc.name, pkgvers(got), err, tc.err)
			}
			continue
		}
		if err != nil || pkgvers(got) != strings.Join(tc.want, " ") {
			t.Errorf("Resolve(%s) = %s, %v, want %s", tc.name, pkgvers(got), err, strings.Join(tc.want, " "))
		}
	}
}

func TestResolveMissingChain(t *testing.T) {
	idx := testIndex(t, "a-1_1: b", "b-1_1: c>=2", "c-1_1:")
	_, err := idx.Resolve("a")
	var me *MissingError
	if !errors.As(err, &me) {
		t.Fatalf("Resolve(a) = %v, want a *MissingError", err)
	}
	if got := strings.Join(me.Chain, " "); got != "a-1_1 b-1_1" || me.Pattern != "c>=2" || me.Have != "c-1_1" {
		t.Errorf("MissingError = chain %q, pattern %q, have %q, want %q, %q, %q", got, me.Pattern, me.Have, "a-1_1 b-1_1", "c>=2", "c-1_1")
	}
	want := "resolving packages: a-1_1 -> b-1_1 needs c>=2, but the repository has only c-1_1: use a repository with a matching version"
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

func TestCheckShlibs(t *testing.T) {
	libc := &Package{Pkgver: "glibc-2.39_1", ShlibProvides: []string{"libc.so.6"}}
	bash := &Package{Pkgver: "bash-5.2_1", ShlibRequires: []string{"libc.so.6", "libncursesw.so.6"}}
	if err := CheckShlibs([]*Package{libc, bash}); err == nil || !strings.Contains(err.Error(), "bash-5.2_1 needs shared library libncursesw.so.6") {
		t.Errorf("CheckShlibs(without ncurses) = %v, want a libncursesw error", err)
	}
	nc := &Package{Pkgver: "ncurses-libs-6.5_1", ShlibProvides: []string{"libncursesw.so.6"}}
	if err := CheckShlibs([]*Package{libc, bash, nc}); err != nil {
		t.Errorf("CheckShlibs(complete) = %v, want nil", err)
	}
}
