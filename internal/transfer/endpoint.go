// Package transfer copies files and directory trees between the host and a guest as one tar stream over ssh, staging and renaming on both sides and refusing unsafe archives from the guest.
package transfer

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Endpoint is one operand of a copy: a path on the host, or a path in a VM
// when written NAME:PATH.
type Endpoint struct {
	VM   string // "" for a host path
	Path string
}

func (e Endpoint) String() string {
	if e.VM == "" {
		return e.Path
	}
	return e.VM + ":" + e.Path
}

// vmNameRE is what can stand before the colon of NAME:PATH: a VM name (a
// DNS label, lowercase) or id. Anything else makes the whole operand a host
// path, so ./a:b, /tmp/a:b, A:b and a.b:c stay local.
var vmNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ParseEndpoint reads one operand. It is NAME:PATH when a colon follows a
// valid VM name with no slash before it (as scp reads HOST:PATH), except a
// Windows-looking drive path such as c:\dir, which stays a host path. A host
// path with a colon stays usable as ./a:b or an absolute path. An empty
// PATH (testbox:) is the guest user's home directory.
func ParseEndpoint(arg string) Endpoint {
	i := strings.IndexByte(arg, ':')
	if i <= 0 {
		return Endpoint{Path: arg}
	}
	name, rest := arg[:i], arg[i+1:]
	if !vmNameRE.MatchString(name) {
		return Endpoint{Path: arg}
	}
	if len(name) == 1 && strings.HasPrefix(rest, `\`) {
		return Endpoint{Path: arg}
	}
	if rest == "" {
		rest = "."
	}
	return Endpoint{VM: name, Path: rest}
}

// Direction says which way a copy goes.
type Direction int

const (
	// ToVM copies host paths into a VM.
	ToVM Direction = iota + 1
	// FromVM copies paths of a VM to the host.
	FromVM
)

// Plan is a parsed copy command line: several sources on one side, one
// destination on the other, exactly one side in a VM.
type Plan struct {
	Dir     Direction
	VM      string
	Sources []string // paths on the source side
	Dest    string   // path on the destination side
}

// ErrUsage marks a command line that cannot be a copy.
var ErrUsage = errors.New("usage")

func usage(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUsage}, args...)...)
}

// ParsePlan reads SRC... DST.
func ParsePlan(args []string) (Plan, error) {
	if len(args) < 2 {
		return Plan{}, usage("vm cp needs a source and a destination, for example: banger vm cp ./notes.txt testbox:/root/")
	}
	eps := make([]Endpoint, len(args))
	for i, a := range args {
		if a == "" {
			return Plan{}, usage("vm cp got an empty path as operand %d", i+1)
		}
		eps[i] = ParseEndpoint(a)
	}
	dst, srcs := eps[len(eps)-1], eps[:len(eps)-1]
	var p Plan
	if dst.VM != "" {
		p = Plan{Dir: ToVM, VM: dst.VM, Dest: dst.Path}
		for _, s := range srcs {
			if s.VM != "" {
				return Plan{}, usage("vm cp copies between the host and one VM, not from %s to %s: copy to the host first", s, dst)
			}
			p.Sources = append(p.Sources, s.Path)
		}
	} else {
		p = Plan{Dir: FromVM, Dest: dst.Path}
		for _, s := range srcs {
			if s.VM != "" && p.VM == "" {
				p.VM = s.VM
			}
		}
		if p.VM == "" {
			return Plan{}, usage("neither side is in a VM: write one as NAME:PATH, for example testbox:/root/notes.txt (a host path with a colon: ./a:b)")
		}
		for _, s := range srcs {
			switch {
			case s.VM == "":
				return Plan{}, usage("vm cp takes its sources from one side: %s is a host path, the others are in vm %s", s, p.VM)
			case s.VM != p.VM:
				return Plan{}, usage("vm cp takes its sources from one VM, got %s and %s", p.VM, s.VM)
			}
			p.Sources = append(p.Sources, s.Path)
		}
	}
	if err := uniqueNames(p); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// uniqueNames refuses two sources that would land on the same name in a
// destination directory.
func uniqueNames(p Plan) error {
	seen := map[string]string{}
	for _, s := range p.Sources {
		n := baseName(s, p.Dir == FromVM)
		if n == "" {
			continue // known only once resolved
		}
		if other, ok := seen[n]; ok {
			return usage("%s and %s would both be copied to %s: copy them one at a time", other, s, n)
		}
		seen[n] = s
	}
	return nil
}

// baseName is the name a source gets inside a destination directory, or ""
// when only its resolved path can tell (".", "..", "/", "dir/.").
func baseName(p string, guest bool) string {
	var b string
	if guest {
		b = path.Base(p)
	} else {
		b = filepath.Base(p)
	}
	if b == "." || b == ".." || b == "/" {
		return ""
	}
	return b
}

// validName reports whether s can be one path component of a copy.
func validName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= maxComponent &&
		!strings.ContainsAny(s, "/\x00")
}

// GuestNames is the name each guest source gets at a host destination, ""
// where only the guest's resolved path can tell (the archive then names it).
func GuestNames(srcs []string) []string {
	out := make([]string, len(srcs))
	for i, s := range srcs {
		out[i] = baseName(s, true)
	}
	return out
}
