package bundle

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiscover(t *testing.T) {
	// A source checkout at src (with a nested working dir), a foreign
	// module at other, and installed dirs.
	base := t.TempDir()
	src := filepath.Join(base, "src")
	writeFile(t, filepath.Join(src, "go.mod"), "module github.com/banger/banger\n\ngo 1.26\n")
	work := filepath.Join(src, "internal", "cli")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(base, "other")
	writeFile(t, filepath.Join(other, "go.mod"), "module example.com/other\n")
	bundle := func(dir string) string {
		writeFile(t, filepath.Join(dir, FileName), `{"schema":1}`)
		return dir
	}
	explicit := bundle(filepath.Join(base, "explicit"))
	env := bundle(filepath.Join(base, "env"))
	installed1 := filepath.Join(base, "share", "runtime") // empty: skipped
	installed2 := bundle(filepath.Join(base, "usr", "runtime"))
	current := filepath.Join(src, "build", "runtime")
	legacy := filepath.Join(src, "runtime")
	legacyState := filepath.Join(src, "state", "runtime")

	tests := []struct {
		name     string
		setup    func() // creates checkout bundles; each test starts from none
		explicit string
		env      string
		workDir  string
		want     string
		warn     string
		wantErr  string
	}{
		{name: "explicit wins", explicit: explicit, env: env, workDir: work, want: explicit},
		{name: "explicit relative to workdir", explicit: "../../../explicit", workDir: work, want: explicit},
		{name: "env before checkout", env: env, workDir: work, setup: func() { bundle(current) }, want: env},
		{name: "checkout build/runtime", workDir: work, setup: func() { bundle(current); bundle(legacy) }, want: current},
		{name: "legacy runtime", workDir: work, setup: func() { bundle(legacy); bundle(legacyState) }, want: legacy, warn: "move it to " + current},
		{name: "legacy state/runtime", workDir: work, setup: func() { bundle(legacyState) }, want: legacyState, warn: "using legacy runtime bundle at " + legacyState},
		{name: "legacy dir without bundle.json", workDir: work, setup: func() { os.MkdirAll(legacy, 0o755) }, want: installed2},
		{name: "installed outside a checkout", workDir: other, setup: func() { bundle(current) }, want: installed2},
		{name: "explicit without bundle", explicit: filepath.Join(base, "nothing"), env: env, wantErr: "holds no bundle.json"},
		{name: "env without bundle", env: filepath.Join(base, "nothing"), wantErr: "BANGER_RUNTIME=" + filepath.Join(base, "nothing") + " holds no bundle.json"},
	}
	for _, tt := range tests {
		os.RemoveAll(filepath.Join(src, "build"))
		os.RemoveAll(legacy)
		os.RemoveAll(filepath.Join(src, "state"))
		if tt.setup != nil {
			tt.setup()
		}
		opts := DiscoverOptions{
			Explicit:  tt.explicit,
			Env:       func(k string) string { return map[string]string{EnvRuntime: tt.env}[k] },
			WorkDir:   tt.workDir,
			Installed: []string{installed1, installed2},
		}
		dir, warnings, err := Discover(opts)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Discover(%s) = %s, %v, want error containing %q", tt.name, dir, err, tt.wantErr)
			}
			continue
		}
		if err != nil || dir != tt.want {
			t.Errorf("Discover(%s) = %s, %v, want %s", tt.name, dir, err, tt.want)
		}
		gotWarn := strings.Join(warnings, "\n")
		if (tt.warn == "") != (gotWarn == "") || !strings.Contains(gotWarn, tt.warn) {
			t.Errorf("Discover(%s) warnings = %q, want %q", tt.name, gotWarn, tt.warn)
		}
	}
}

func TestDiscoverNotFound(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	writeFile(t, filepath.Join(src, "go.mod"), "module github.com/banger/banger\n")
	_, _, err := Discover(DiscoverOptions{
		Env:       func(string) string { return "" },
		WorkDir:   src,
		Installed: []string{"/nonexistent/banger/runtime"},
	})
	if err == nil {
		t.Fatal("Discover with no bundle anywhere = nil error, want one")
	}
	for _, want := range []string{
		filepath.Join(src, "build", "runtime"),
		filepath.Join(src, "runtime"),
		filepath.Join(src, "state", "runtime"),
		"/nonexistent/banger/runtime",
		"make runtime-bundle",
		"set BANGER_RUNTIME",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Discover error = %q, want it to mention %q", err, want)
		}
	}
}

func TestDefaultInstalled(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"XDG_DATA_HOME": "/data", "HOME": "/home/u"}, "/data/banger/runtime /usr/local/lib/banger/runtime /usr/lib/banger/runtime"},
		{map[string]string{"XDG_DATA_HOME": "relative", "HOME": "/home/u"}, "/home/u/.local/share/banger/runtime /usr/local/lib/banger/runtime /usr/lib/banger/runtime"},
	}
	for _, tt := range tests {
		got := strings.Join(DefaultInstalled(func(k string) string { return tt.env[k] }), " ")
		if got != tt.want {
			t.Errorf("DefaultInstalled(%v) = %s, want %s", tt.env, got, tt.want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
