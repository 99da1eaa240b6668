package xbps

import (
	"fmt"
	"slices"
	"strings"
)

// MissingError is returned by Resolve when a dependency cannot be satisfied.
type MissingError struct {
	// Pattern is the unsatisfied pattern, e.g. "containerd>=1.7_1".
	Pattern string
	// Chain lists the pkgvers that led to it, the requested package first;
	// empty when Pattern itself was requested.
	Chain []string
	// Have is the pkgver the repository has under the pattern's name, when
	// it exists but does not match.
	Have string
}

func (e *MissingError) Error() string {
	var what string
	if len(e.Chain) > 0 {
		what = fmt.Sprintf("%s needs %s", strings.Join(e.Chain, " -> "), e.Pattern)
	} else {
		what = "package " + e.Pattern + " was asked for"
	}
	if e.Have != "" {
		return fmt.Sprintf("resolving packages: %s, but the repository has only %s: use a repository with a matching version", what, e.Have)
	}
	return fmt.Sprintf("resolving packages: %s, but no package in the repository provides it: check the name and the mirror", what)
}

// Find returns the package that satisfies pattern: the package of that name
// when its version matches, otherwise a package whose provides (virtual
// packages) match, the first by name when several do. It returns nil when
// nothing does.
func (ix *Index) Find(pattern string) *Package {
	name := PatternName(pattern)
	if p, ok := ix.Packages[name]; ok && Match(p.Pkgver, pattern) {
		return p
	}
	// A glob may not reduce to a name ("foo-1.*"): try every package.
	if strings.ContainsAny(pattern, "*?[]") && !strings.ContainsAny(pattern, "<>") {
		for _, n := range ix.Names() {
			if p := ix.Packages[n]; Match(p.Pkgver, pattern) {
				return p
			}
		}
	}
	for _, n := range ix.Names() {
		if p := ix.Packages[n]; p.provides(pattern) {
			return p
		}
	}
	return nil
}

// provides reports whether one of p's virtual pkgvers matches pattern.
func (p *Package) provides(pattern string) bool {
	for _, v := range p.Provides {
		if Match(v, pattern) {
			return true
		}
	}
	return false
}

// Resolve returns the packages named by patterns together with everything
// their run_depends need, each after its dependencies (an install order),
// without duplicates. A dependency that a package already chosen satisfies
// (by name or through its provides) is not looked up again, so a virtual
// package is provided once. Dependency cycles are allowed, as xbps allows
// them; their members come in the order they were reached.
func (ix *Index) Resolve(patterns ...string) ([]*Package, error) {
	var (
		order  []*Package
		chosen = map[string]bool{} // by name
		active = map[string]bool{} // on the current path
	)
	satisfied := func(pattern string) bool {
		for _, p := range order {
			if Match(p.Pkgver, pattern) || p.provides(pattern) {
				return true
			}
		}
		return false
	}
	var visit func(pattern string, chain []string) error
	visit = func(pattern string, chain []string) error {
		if satisfied(pattern) {
			return nil
		}
		p := ix.Find(pattern)
		if p == nil {
			e := &MissingError{Pattern: pattern, Chain: slices.Clone(chain)}
			if have, ok := ix.Packages[PatternName(pattern)]; ok {
				e.Have = have.Pkgver
			}
			return e
		}
		if chosen[p.Name] || active[p.Name] {
			return nil
		}
		active[p.Name] = true
		next := append(slices.Clone(chain), p.Pkgver)
		for _, d := range p.RunDepends {
			if err := visit(d, next); err != nil {
				return err
			}
		}
		delete(active, p.Name)
		chosen[p.Name] = true
		order = append(order, p)
		return nil
	}
	for _, pat := range patterns {
		if err := visit(pat, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// CheckShlibs reports the first shared library that a package in pkgs
// requires and no package in pkgs provides, as xbps checks a transaction.
func CheckShlibs(pkgs []*Package) error {
	have := map[string]bool{}
	for _, p := range pkgs {
		for _, s := range p.ShlibProvides {
			have[s] = true
		}
	}
	for _, p := range pkgs {
		for _, s := range p.ShlibRequires {
			if !have[s] {
				return fmt.Errorf("resolving packages: %s needs shared library %s, which no selected package provides: the repository is inconsistent", p.Pkgver, s)
			}
		}
	}
	return nil
}
