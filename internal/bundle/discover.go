package bundle

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvRuntime is the environment variable naming the runtime bundle directory.
const EnvRuntime = "BANGER_RUNTIME"

// ModulePath is the Go module whose source checkout Discover recognises.
const ModulePath = "github.com/banger/banger"

// DiscoverOptions says where Discover looks.
type DiscoverOptions struct {
	// Explicit is the directory from the config file or a flag; it wins.
	Explicit string
	// Env reads environment variables; default os.Getenv.
	Env func(string) string
	// WorkDir is where the source checkout search starts; default the current directory.
	WorkDir string
	// Installed lists the installed locations in order; nil means DefaultInstalled.
	Installed []string
}

// DefaultInstalled lists the installed bundle locations in the order Discover
// tries them: the user's data dir, then /usr/local/lib and /usr/lib.
func DefaultInstalled(env func(string) string) []string {
	if env == nil {
		env = os.Getenv
	}
	var dirs []string
	if d := env("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		dirs = append(dirs, filepath.Join(d, "banger", "runtime"))
	} else if home := env("HOME"); home != "" {
		dirs = append(dirs, filepath.Join(home, ".local", "share", "banger", "runtime"))
	} else if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".local", "share", "banger", "runtime"))
	}
	return append(dirs, "/usr/local/lib/banger/runtime", "/usr/lib/banger/runtime")
}

// Discover finds the runtime bundle directory. It tries, in order: the
// explicit directory; $BANGER_RUNTIME; build/runtime of the banger source
// checkout holding WorkDir (then, with a warning, the legacy <root>/runtime
// and <root>/state/runtime); the installed locations. A directory counts when
// it holds bundle.json. An explicit directory or $BANGER_RUNTIME without one
// is an error rather than a reason to look elsewhere.
func Discover(opts DiscoverOptions) (dir string, warnings []string, err error) {
	env := opts.Env
	if env == nil {
		env = os.Getenv
	}
	workDir := opts.WorkDir
	if workDir == "" {
		if workDir, err = os.Getwd(); err != nil {
			return "", nil, fmt.Errorf("finding runtime bundle: %w", err)
		}
	}
	abs := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(workDir, p)
		}
		return filepath.Clean(p)
	}

	if opts.Explicit != "" {
		d := abs(opts.Explicit)
		if !hasBundle(d) {
			return "", nil, fmt.Errorf("finding runtime bundle: the configured runtime directory %s holds no %s: run `make runtime-bundle` or `banger runtime install` for it, or fix the runtime_dir setting or --runtime flag", d, FileName)
		}
		return d, nil, nil
	}
	if v := env(EnvRuntime); v != "" {
		d := abs(v)
		if !hasBundle(d) {
			return "", nil, fmt.Errorf("finding runtime bundle: %s=%s holds no %s: run `make runtime-bundle` there, or fix or unset %s", EnvRuntime, v, FileName, EnvRuntime)
		}
		return d, nil, nil
	}

	var looked []string
	if root, ok := sourceRoot(workDir); ok {
		current := filepath.Join(root, "build", "runtime")
		if hasBundle(current) {
			return current, nil, nil
		}
		looked = append(looked, current)
		for _, legacy := range []string{filepath.Join(root, "runtime"), filepath.Join(root, "state", "runtime")} {
			if hasBundle(legacy) {
				w := fmt.Sprintf("using legacy runtime bundle at %s; move it to %s or rebuild with make runtime-bundle", legacy, current)
				return legacy, []string{w}, nil
			}
			looked = append(looked, legacy)
		}
	}
	installed := opts.Installed
	if installed == nil {
		installed = DefaultInstalled(env)
	}
	for _, d := range installed {
		d = abs(d)
		if hasBundle(d) {
			return d, nil, nil
		}
		looked = append(looked, d)
	}
	return "", nil, fmt.Errorf("finding runtime bundle: no %s in %s (%s unset, no runtime_dir configured): run `make runtime-bundle` in the banger source checkout, `banger runtime install --manifest FILE`, or set %s",
		FileName, strings.Join(looked, ", "), EnvRuntime, EnvRuntime)
}

// hasBundle reports whether dir holds a bundle.json file.
func hasBundle(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, FileName))
	return err == nil && fi.Mode().IsRegular()
}

// sourceRoot walks up from dir to the directory whose go.mod declares ModulePath.
func sourceRoot(dir string) (string, bool) {
	dir = filepath.Clean(dir)
	for {
		if modulePath(filepath.Join(dir, "go.mod")) == ModulePath {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// modulePath returns the module line of a go.mod, or "".
func modulePath(goMod string) string {
	f, err := os.Open(goMod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`)
		}
	}
	return ""
}
