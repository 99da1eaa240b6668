package egress

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/BurntSushi/toml"
)

// MaxFileSize is the largest policy file ParseFile reads.
const MaxFileSize = 64 << 10

// fileForm is the TOML form of a policy file.
type fileForm struct {
	Mode  *string  `toml:"mode"`
	Allow []string `toml:"allow"`
	Deny  []string `toml:"deny"`
}

// LoadFile reads a policy file (see ParseFile).
func LoadFile(path string) (Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return Policy{}, fmt.Errorf("reading egress policy %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return Policy{}, fmt.Errorf("reading egress policy %s: %w", path, err)
	}
	return ParseFile(path, data)
}

// ParseFile parses a policy file, which a project can commit beside its
// code:
//
//	# egress.toml
//	allow = ["github.com", "*.github.com", "*.npmjs.org", "10.1.2.0/24:5432/tcp"]
//	deny  = ["gist.github.com"]
//	mode  = "allow"   # optional when only one list is given
//
// Without mode, a file with only allow is ModeAllow and one with only
// deny ModeDeny; a file with both lists must say which it means, and one
// with neither must say mode. Unknown keys are refused. name labels
// errors.
func ParseFile(name string, data []byte) (Policy, error) {
	fail := func(err error) (Policy, error) {
		return Policy{}, fmt.Errorf("reading egress policy %s: %w", name, err)
	}
	if len(data) > MaxFileSize {
		return fail(fmt.Errorf("larger than %d bytes", MaxFileSize))
	}
	var f fileForm
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return fail(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fail(fmt.Errorf("unknown key %q: the keys are mode, allow and deny", und[0].String()))
	}
	var p Policy
	for _, l := range []struct {
		key  string
		in   []string
		dest *[]Entry
	}{{"allow", f.Allow, &p.Allow}, {"deny", f.Deny, &p.Deny}} {
		if len(l.in) > MaxEntries {
			return fail(fmt.Errorf("%s has more than %d entries: use networks or wildcards", l.key, MaxEntries))
		}
		for i, s := range l.in {
			e, err := ParseEntry(s)
			if err != nil {
				return fail(fmt.Errorf("%s item %d: %w", l.key, i+1, err))
			}
			if !slices.Contains(*l.dest, e) {
				*l.dest = append(*l.dest, e)
			}
		}
	}
	switch {
	case f.Mode != nil && *f.Mode == "":
		return fail(errors.New(`mode is empty: write "default", "allow", "deny" or "open", or leave it out`))
	case f.Mode != nil:
		p.Mode = Mode(*f.Mode)
	case len(p.Allow) > 0 && len(p.Deny) > 0:
		return fail(errors.New(`it has both allow and deny: add mode = "allow" (only allow, minus deny) or mode = "deny" (everything public but deny; allow then opens private ranges)`))
	case len(p.Allow) > 0:
		p.Mode = ModeAllow
	case len(p.Deny) > 0:
		p.Mode = ModeDeny
	default:
		return fail(errors.New(`it allows and denies nothing: add allow or deny, or mode = "default" or "open"`))
	}
	if err := p.Validate(); err != nil {
		return fail(err)
	}
	return p, nil
}
