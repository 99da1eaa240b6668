package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/rpc"
)

// mountValue is the repeatable --mount HOSTDIR:GUESTDIR[:ro] flag.
type mountValue struct{ mounts *[]rpc.Mount }

func (v mountValue) String() string {
	if v.mounts == nil {
		return ""
	}
	var out []string
	for _, m := range *v.mounts {
		out = append(out, mountString(m))
	}
	return strings.Join(out, ",")
}

// Set parses one --mount. A relative HOSTDIR (or one starting with ~/) is
// made absolute here, against the current directory (or home); bangerd
// checks everything else.
func (v mountValue) Set(s string) error {
	m, err := parseMount(s)
	if err != nil {
		return err
	}
	*v.mounts = append(*v.mounts, m)
	return nil
}

func (v mountValue) Type() string { return "HOSTDIR:GUESTDIR[:ro]" }

func parseMount(s string) (rpc.Mount, error) {
	usage := fmt.Errorf("--mount %q: want HOSTDIR:GUESTDIR, or HOSTDIR:GUESTDIR:ro for read-only, for example --mount ./src:/root/src", s)
	rest := s
	var m rpc.Mount
	switch {
	case strings.HasSuffix(rest, ":ro"):
		m.ReadOnly, rest = true, strings.TrimSuffix(rest, ":ro")
	case strings.HasSuffix(rest, ":rw"):
		rest = strings.TrimSuffix(rest, ":rw")
	}
	// A guest folder has no colon; a host folder may.
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 || i == len(rest)-1 {
		return m, usage
	}
	host, guest := rest[:i], rest[i+1:]
	if host == "~" || strings.HasPrefix(host, "~/") {
		home, err := os.UserHomeDir()
		if err != nil {
			return m, fmt.Errorf("--mount %q: %w", s, err)
		}
		host = filepath.Join(home, strings.TrimPrefix(host, "~"))
	}
	abs, err := filepath.Abs(host)
	if err != nil {
		return m, fmt.Errorf("--mount %q: %w", s, err)
	}
	m.Host, m.Guest = abs, guest
	return m, nil
}

func mountString(m rpc.Mount) string {
	s := m.Host + ":" + m.Guest
	if m.ReadOnly {
		s += ":ro"
	}
	return s
}
