package tmux

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tmuxEnv is a private tmux server socket; the server, whoever starts it,
// is killed when the test ends.
type tmuxEnv struct {
	bin, sock, home, state string
}

// newTmuxEnv skips the test without tmux and isolates it from the user's
// tmux: HOME is a temporary directory (so no ~/.tmux.conf), TMUX is unset
// and the panes run /bin/sh.
func newTmuxEnv(t *testing.T) *tmuxEnv {
	t.Helper()
	bin, err := exec.LookPath("tmux")
	if err != nil {
		t.Skipf("tmux is not installed, cannot run a tmux server: %v", err)
	}
	dir := t.TempDir()
	e := &tmuxEnv{
		bin:   bin,
		sock:  filepath.Join(dir, "sock"),
		home:  filepath.Join(dir, "home"),
		state: filepath.Join(dir, "home", ".local", "share", "banger", "tmux-sessions.json"),
	}
	if len(e.sock) > 100 {
		t.Fatalf("socket path %s is too long for a unix socket; shorten the test name", e.sock)
	}
	if err := os.Mkdir(e.home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", e.home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(e.home, ".config"))
	t.Setenv("SHELL", "/bin/sh")
	t.Setenv("TMUX", "") // restored after the test
	os.Unsetenv("TMUX")
	t.Cleanup(func() {
		// Registered after t.TempDir, so it runs before the socket's
		// directory is removed.
		exec.Command(e.bin, "-S", e.sock, "kill-server").Run()
	})
	return e
}

// tmux runs a tmux command on the test server; a server it starts reads no
// configuration file.
func (e *tmuxEnv) tmux(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(e.bin, append([]string{"-u", "-f", "/dev/null", "-S", e.sock}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// killServer stops the server and waits until its socket no longer
// accepts connections: an exiting server still does for a moment.
func (e *tmuxEnv) killServer(t *testing.T) {
	t.Helper()
	e.tmux(t, "kill-server")
	for deadline := time.Now().Add(5 * time.Second); e.running(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("tmux server still answers after kill-server")
		}
	}
}

// running reports whether a server (even an exiting one) has the socket.
func (e *tmuxEnv) running() bool {
	out, err := exec.Command(e.bin, "-S", e.sock, "list-sessions").CombinedOutput()
	return err == nil || !(strings.Contains(string(out), "no server running") || strings.Contains(string(out), "error connecting"))
}

// settle waits until every pane runs its shell: a new pane briefly has no
// current path and runs "tmux".
func (e *tmuxEnv) settle(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out := e.tmux(t, "list-panes", "-a", "-F", "#{pane_current_command}:#{pane_current_path}\x1e")
		ready := true
		for _, line := range strings.Split(strings.TrimSuffix(out, "\x1e\n"), "\x1e\n") {
			ready = ready && strings.HasPrefix(line, "sh:/")
		}
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("panes not ready after 5s:\n%s", out)
		}
	}
}

type paneSnap struct {
	Index    int
	Path     string
	Active   bool
	Geometry string
}

type windowSnap struct {
	Index      int
	Name       string
	Active     bool
	AutoRename bool
	Panes      []paneSnap
}

type sessionSnap struct {
	Name    string
	Windows []windowSnap
}

// snapshot lists the server's structure, sorted as tmux sorts it, once
// the panes are ready.
func (e *tmuxEnv) snapshot(t *testing.T) []sessionSnap {
	t.Helper()
	e.settle(t)
	const sep, end = "\x1f", "\x1e\n" // the tests' names hold neither
	out := e.tmux(t, "list-panes", "-a", "-F", strings.Join([]string{
		"#{session_name}", "#{window_index}", "#{window_name}", "#{window_active}", "#{automatic-rename}",
		"#{pane_index}", "#{pane_current_path}", "#{pane_active}",
		"#{pane_left},#{pane_top},#{pane_width}x#{pane_height}",
	}, sep)+"\x1e")
	var snap []sessionSnap
	for _, rec := range strings.Split(strings.TrimSuffix(out, end), end) {
		f := strings.Split(rec, sep)
		if len(f) != 9 {
			t.Fatalf("snapshot record %q has %d fields", rec, len(f))
		}
		if len(snap) == 0 || snap[len(snap)-1].Name != f[0] {
			snap = append(snap, sessionSnap{Name: f[0]})
		}
		s := &snap[len(snap)-1]
		wi, _ := strconv.Atoi(f[1])
		if len(s.Windows) == 0 || s.Windows[len(s.Windows)-1].Index != wi {
			w := windowSnap{Index: wi, Name: f[2], Active: f[3] == "1", AutoRename: f[4] == "1"}
			if w.AutoRename {
				w.Name = "" // tmux renames it after its program at any time
			}
			s.Windows = append(s.Windows, w)
		}
		w := &s.Windows[len(s.Windows)-1]
		pi, _ := strconv.Atoi(f[5])
		w.Panes = append(w.Panes, paneSnap{Index: pi, Path: f[6], Active: f[7] == "1", Geometry: f[8]})
	}
	return snap
}

func mkdirs(t *testing.T, parent string, names ...string) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, n := range names {
		dirs[n] = filepath.Join(parent, n)
		if err := os.MkdirAll(dirs[n], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dirs
}

func TestTmuxSaveRestoreRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		// setup builds sessions; tmux format-expands -s, -n and -c, so a
		// literal # is written ##.
		setup        func(t *testing.T, e *tmuxEnv, d map[string]string)
		wantSessions int
	}{
		{
			name: "windows and panes",
			setup: func(t *testing.T, e *tmuxEnv, d map[string]string) {
				e.tmux(t, "new-session", "-d", "-s", "work", "-x", "200", "-y", "50", "-n", "editor", "-c", d["src"])
				e.tmux(t, "split-window", "-h", "-t", "work:0", "-c", d["docs"])
				e.tmux(t, "split-window", "-v", "-t", "work:0", "-c", d["build"])
				e.tmux(t, "select-pane", "-t", "work:0.1")
				e.tmux(t, "new-window", "-d", "-t", "work:2", "-n", "logs", "-c", d["logs"])
				e.tmux(t, "split-window", "-v", "-t", "work:2", "-c", d["src"])
				e.tmux(t, "new-window", "-d", "-t", "work:5", "-c", e.home) // automatic name
				e.tmux(t, "select-window", "-t", "work:2")
				// Windows at 1 and 4 only: the first is not at base-index.
				e.tmux(t, "new-session", "-d", "-s", "side", "-n", "scratch", "-c", d["docs"])
				e.tmux(t, "new-window", "-d", "-t", "side:1", "-n", "one", "-c", d["build"])
				e.tmux(t, "new-window", "-d", "-t", "side:4", "-n", "four", "-c", d["logs"])
				e.tmux(t, "split-window", "-h", "-t", "side:4", "-c", d["docs"])
				e.tmux(t, "split-window", "-h", "-t", "side:4", "-c", d["src"])
				e.tmux(t, "select-window", "-t", "side:4")
				e.tmux(t, "kill-window", "-t", "side:0")
			},
			wantSessions: 2,
		},
		{
			name: "unusual names",
			setup: func(t *testing.T, e *tmuxEnv, d map[string]string) {
				odd := strings.ReplaceAll(d["odd #{pane_id}\tdir é"], "#", "##")
				sid := strings.TrimSpace(e.tmux(t, "new-session", "-d", "-s", `back\slash tab`+"\t"+`é ##(x)`,
					"-n", "tab\tand ##{pane_id} é", "-c", odd, "-P", "-F", "#{session_id}"))
				e.tmux(t, "split-window", "-t", sid+":", "-c", d["src"])
				e.tmux(t, "new-window", "-d", "-t", sid+":", "-n", "new\nline", "-c", d["line\nbreak"])
			},
			wantSessions: 1,
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			e := newTmuxEnv(t)
			d := mkdirs(t, filepath.Dir(e.sock), "src", "docs", "build", "logs", "odd #{pane_id}\tdir é", "line\nbreak")
			tt.setup(t, e, d)
			want := e.snapshot(t)
			if len(want) != tt.wantSessions {
				t.Fatalf("setup made %d sessions, want %d: %+v", len(want), tt.wantSessions, want)
			}

			ctx := context.Background()
			if err := Save(ctx, e.bin, e.sock, e.state); err != nil {
				t.Fatalf("Save: %v", err)
			}
			for path, perm := range map[string]os.FileMode{e.state: 0o600, filepath.Dir(e.state): 0o700 | os.ModeDir} {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != perm {
					t.Errorf("%s has mode %v, want %v", path, fi.Mode(), perm)
				}
			}
			var st tmuxState
			data, _ := os.ReadFile(e.state)
			if err := json.Unmarshal(data, &st); err != nil || st.Version != 1 || len(st.Sessions) != tt.wantSessions {
				t.Fatalf("state file: version %d, %d sessions, err %v:\n%s", st.Version, len(st.Sessions), err, data)
			}
			for _, s := range st.Sessions {
				for _, w := range s.Windows {
					for _, p := range w.Panes {
						if p.Command != "sh" || p.Path == "" || w.Layout == "" {
							t.Errorf("session %q window %d pane %d: command %q, path %q, layout %q", s.Name, w.Index, p.Index, p.Command, p.Path, w.Layout)
						}
					}
				}
			}
			if entries, _ := os.ReadDir(filepath.Dir(e.state)); len(entries) != 1 {
				t.Errorf("state directory holds %d entries, want only the state file", len(entries))
			}

			e.killServer(t)
			n, err := Restore(ctx, e.bin, e.sock, e.state)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if n != tt.wantSessions {
				t.Errorf("Restore created %d sessions, want %d", n, tt.wantSessions)
			}
			if got := e.snapshot(t); !reflect.DeepEqual(got, want) {
				t.Errorf("restored structure differs:\n got %+v\nwant %+v", got, want)
			}

			// Restoring again creates nothing.
			if n, err := Restore(ctx, e.bin, e.sock, e.state); n != 0 || err != nil {
				t.Errorf("second Restore = %d, %v; want 0, nil", n, err)
			}
		})
	}
}

func TestTmuxSave(t *testing.T) {
	const old = `{"version":1,"sessions":[{"name":"old","windows":[]}]}`
	tests := []struct {
		name string
		// prepare returns the state file's content before the save ("" for none).
		prepare  func(t *testing.T, e *tmuxEnv) string
		wantSame bool // the file is the one prepare left, not rewritten
	}{
		{
			name:     "no server keeps file",
			prepare:  func(t *testing.T, e *tmuxEnv) string { return old },
			wantSame: true,
		},
		{
			name:    "no server writes nothing",
			prepare: func(t *testing.T, e *tmuxEnv) string { return "" },
		},
		{
			name: "stale socket keeps file",
			prepare: func(t *testing.T, e *tmuxEnv) string {
				// A file where the socket should be: "no server running".
				if err := os.WriteFile(e.sock, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return old
			},
			wantSame: true,
		},
		{
			name: "unchanged sessions not rewritten",
			prepare: func(t *testing.T, e *tmuxEnv) string {
				e.tmux(t, "new-session", "-d", "-s", "same", "-c", e.home)
				e.settle(t)
				if err := Save(context.Background(), e.bin, e.sock, e.state); err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(e.state)
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			},
			wantSame: true,
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			e := newTmuxEnv(t)
			content := tt.prepare(t, e)
			var before os.FileInfo
			if content != "" {
				if _, err := os.Stat(e.state); err != nil {
					if err := os.MkdirAll(filepath.Dir(e.state), 0o700); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(e.state, []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				var err error
				if before, err = os.Stat(e.state); err != nil {
					t.Fatal(err)
				}
			}
			if err := Save(context.Background(), e.bin, e.sock, e.state); err != nil {
				t.Fatalf("Save: %v", err)
			}
			after, err := os.Stat(e.state)
			if content == "" {
				if !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("Save without a server created %s (stat: %v)", e.state, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(e.state); string(got) != content {
				t.Errorf("state file changed:\n got %s\nwant %s", got, content)
			}
			if tt.wantSame && !os.SameFile(before, after) {
				t.Error("state file was rewritten")
			}
		})
	}
}

func TestTmuxRestore(t *testing.T) {
	tests := []struct {
		name string
		// state is the state file's content; "" means no file. HOME and
		// GONE in it are replaced by the home directory and by a path
		// that does not exist.
		state string
		// existing sessions are created before the restore.
		existing []string
		wantN    int
		wantErr  string // substring; STATE is replaced by the file's path
		// want is the structure after the restore: session name, then
		// per window "index:name:pane paths"; nil means no server.
		want []string
	}{
		{
			name: "missing file",
		},
		{
			name:    "corrupt file",
			state:   `{"version":1,"sessions":[`,
			wantErr: "parsing tmux state STATE",
		},
		{
			name:    "unknown version",
			state:   `{"version":7,"sessions":[]}`,
			wantErr: "parsing tmux state STATE: unsupported version 7",
		},
		{
			name: "existing session skipped",
			state: `{"version":1,"sessions":[
				{"name":"keep","windows":[{"index":3,"name":"saved","panes":[{"index":0,"path":"HOME"}]}]},
				{"name":"new","windows":[{"index":0,"name":"w","active":true,"panes":[{"index":0,"path":"HOME","active":true}]}]}]}`,
			existing: []string{"keep"},
			wantN:    1,
			want:     []string{"keep 0:orig:HOME", "new 0:w:HOME"},
		},
		{
			name: "deleted path uses home",
			state: `{"version":1,"sessions":[{"name":"s","windows":[{"index":0,"name":"w","layout":"","panes":[
				{"index":0,"path":"GONE","command":"vim","active":true},{"index":1,"path":"HOME"},{"index":2,"path":""}]}]}]}`,
			wantN: 1,
			want:  []string{"s 0:w:HOME,HOME,HOME"},
		},
		{
			name: "bad layout keeps panes",
			state: `{"version":1,"sessions":[{"name":"s","windows":[{"index":0,"name":"w","layout":"nonsense","panes":[
				{"index":0,"path":"HOME"},{"index":1,"path":"HOME"}]}]}]}`,
			wantN: 1,
			want:  []string{"s 0:w:HOME,HOME"},
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			e := newTmuxEnv(t)
			gone := filepath.Join(e.home, "deleted")
			if tt.state != "" {
				if err := os.MkdirAll(filepath.Dir(e.state), 0o700); err != nil {
					t.Fatal(err)
				}
				s := strings.NewReplacer("HOME", e.home, "GONE", gone).Replace(tt.state)
				if err := os.WriteFile(e.state, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for _, name := range tt.existing {
				e.tmux(t, "new-session", "-d", "-s", name, "-n", "orig", "-c", e.home)
			}
			n, err := Restore(context.Background(), e.bin, e.sock, e.state)
			wantErr := strings.ReplaceAll(tt.wantErr, "STATE", e.state)
			switch {
			case wantErr == "" && err != nil:
				t.Fatalf("Restore: %v", err)
			case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
				t.Fatalf("Restore error = %v, want one containing %q", err, wantErr)
			}
			if n != tt.wantN {
				t.Errorf("Restore created %d sessions, want %d", n, tt.wantN)
			}
			if tt.want == nil {
				if e.running() {
					t.Errorf("Restore started a tmux server: %s", e.tmux(t, "list-sessions"))
				}
				return
			}
			var got []string
			for _, s := range e.snapshot(t) {
				line := s.Name
				for _, w := range s.Windows {
					var paths []string
					for _, p := range w.Panes {
						paths = append(paths, strings.ReplaceAll(p.Path, e.home, "HOME"))
					}
					line += " " + strconv.Itoa(w.Index) + ":" + w.Name + ":" + strings.Join(paths, ",")
				}
				got = append(got, line)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("after restore:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestTmuxParsePanes(t *testing.T) {
	const sep, end = "<S>", "<E>\n"
	rec := func(f ...string) string { return strings.Join(f, sep) + end }
	tests := []struct {
		name    string
		out     string
		want    []tmuxSession
		wantErr string
	}{
		{name: "empty", out: ""},
		{
			name: "tabs and newlines in names",
			out: rec("s", "1", "w\tx", "L1", "0", "1", "1", "/a\nb", "0", "sh") +
				rec("s", "1", "w\tx", "L1", "0", "1", "0", "/c\td", "1", "vim") +
				rec("s", "0", "first", "L0", "1", "0", "0", "/", "1", "bash") +
				rec(`t\\u`, "0", "w", "L", "1", "on", "0", "/", "1", "top"),
			want: []tmuxSession{
				{Name: "s", Windows: []tmuxWindow{
					{Index: 0, Name: "first", Layout: "L0", Active: true, Panes: []tmuxPane{{Index: 0, Path: "/", Command: "bash", Active: true}}},
					{Index: 1, Name: "w\tx", Layout: "L1", AutomaticRename: true, Panes: []tmuxPane{
						{Index: 0, Path: "/c\td", Command: "vim", Active: true},
						{Index: 1, Path: "/a\nb", Command: "sh"},
					}},
				}},
				{Name: `t\\u`, Windows: []tmuxWindow{
					{Index: 0, Name: "w", Layout: "L", Active: true, AutomaticRename: true, Panes: []tmuxPane{{Index: 0, Path: "/", Command: "top", Active: true}}},
				}},
			},
		},
		{name: "missing field", out: rec("s", "0", "w", "L", "1", "0", "0", "/", "1"), wantErr: "has 9 fields, want 10"},
		{name: "unterminated", out: rec("s", "0", "w", "L", "1", "0", "0", "/", "1", "sh") + "s<S>0", wantErr: "unterminated record"},
		{name: "bad index", out: rec("s", "x", "w", "L", "1", "0", "0", "/", "1", "sh"), wantErr: "window index of session \"s\""},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			st, err := parseTmuxPanes(tt.out, sep, strings.TrimSuffix(end, "\n"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.Version != tmuxStateVersion || !reflect.DeepEqual(st.Sessions, tt.want) {
				t.Errorf("got version %d %+v\nwant %+v", st.Version, st.Sessions, tt.want)
			}
		})
	}
}

func TestTmuxEscapes(t *testing.T) {
	tests := []struct{ in, unvis string }{
		{"plain é", "plain é"},
		{`a\\b`, `a\b`},
		{`c\td\ne`, "c\td\ne"},
		{`esc\033[m`, "esc\x1b[m"},
		{`\0x\377`, "\x00x\xff"},
		{`odd\q end\`, `odd\q end\`},
		{`\400`, `\400`},
	}
	for _, tt := range tests {
		if got := tmuxUnvis(tt.in); got != tt.unvis {
			t.Errorf("tmuxUnvis(%q) = %q, want %q", tt.in, got, tt.unvis)
		}
	}
	if got := tmuxLiteral("a#{b}##(c)"); got != "a##{b}####(c)" {
		t.Errorf("tmuxLiteral = %q", got)
	}
	for layout, want := range map[string][3]int{
		"21be,200x50,0,0{100x50,0,0,0,99x50,101,0,1}": {200, 50, 1},
		"b25d,80x24,0,0,0":                            {80, 24, 1},
		"nonsense":                                    {0, 0, 0},
		"x,0x24,0,0":                                  {0, 0, 0},
		"":                                            {0, 0, 0},
	} {
		w, h, ok := tmuxLayoutSize(layout)
		if got := [3]int{w, h, map[bool]int{true: 1}[ok]}; got != want {
			t.Errorf("tmuxLayoutSize(%q) = %v, want %v", layout, got, want)
		}
	}
}
