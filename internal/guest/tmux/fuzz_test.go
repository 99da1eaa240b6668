package tmux

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzTmuxParsePanes: whatever tmux list-panes prints, parseTmuxPanes
// refuses it or returns every pane once, in sessions of unique names whose
// windows (unique per session) and panes are sorted by index, and the
// state file Save writes from it decodes to the same state.
func FuzzTmuxParsePanes(f *testing.F) {
	const sep, end = "<S>", "<E>"
	rec := func(fields ...string) string { return strings.Join(fields, sep) + end + "\n" }
	for _, s := range []string{
		"",
		rec("s", "1", "w\tx", "L1", "0", "1", "1", "/a\nb", "0", "sh") + rec("s", "1", "w\tx", "L1", "0", "1", "0", "/c\td", "1", "vim") +
			rec("s", "0", "first", "L0", "1", "0", "0", "/", "1", "bash") + rec(`t\\u`, "0", "w", "L", "1", "on", "0", "/", "1", "top"),
		rec("s", "0", "w", "L", "1", "0", "0", "/", "1"),
		rec("s", "0", "w", "L", "1", "0", "0", "/", "1", "sh") + "s<S>0",
		rec("s", "x", "w", "L", "1", "0", "0", "/", "1", "sh"),
		rec("s", "-1", "w", "b25d,80x24,0,0,0", "1", "off", "-7", "/tmp/#{pane_id}", "1", "sh"),
		rec("s", "0", "w", "L", "1", "0", "0", "/", "1", "sh") + rec("s", "0", "w2", "L", "0", "0", "0", "/x", "0", "sh"),
		rec("é", "9223372036854775807", "", "", "", "", "0", "", "", ""),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, out string) {
		st, err := parseTmuxPanes(out, sep, end)
		if err != nil {
			return
		}
		records := strings.Count(out, end+"\n")
		panes := 0
		names := map[string]bool{}
		for _, s := range st.Sessions {
			if names[s.Name] {
				t.Fatalf("parseTmuxPanes(%q): session %q twice", out, s.Name)
			}
			names[s.Name] = true
			if !slices.IsSortedFunc(s.Windows, func(a, b tmuxWindow) int { return a.Index - b.Index }) {
				t.Fatalf("parseTmuxPanes(%q): windows of %q not sorted: %+v", out, s.Name, s.Windows)
			}
			for i, w := range s.Windows {
				if i > 0 && s.Windows[i-1].Index == w.Index {
					t.Fatalf("parseTmuxPanes(%q): window %d of %q twice", out, w.Index, s.Name)
				}
				if len(w.Panes) == 0 || !slices.IsSortedFunc(w.Panes, func(a, b tmuxPane) int { return a.Index - b.Index }) {
					t.Fatalf("parseTmuxPanes(%q): panes of window %d of %q empty or not sorted: %+v", out, w.Index, s.Name, w.Panes)
				}
				panes += len(w.Panes)
			}
		}
		if panes != records || st.Version != tmuxStateVersion {
			t.Fatalf("parseTmuxPanes(%q) = version %d, %d panes, want version %d, %d panes", out, st.Version, panes, tmuxStateVersion, records)
		}
		if !utf8.ValidString(out) {
			return // JSON holds text: bytes that are not UTF-8 come back as U+FFFD
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			t.Fatal(err)
		}
		var back tmuxState
		if err := json.Unmarshal(buf.Bytes(), &back); err != nil || !reflect.DeepEqual(back, st) {
			t.Fatalf("state file of %q decodes as %+v, %v; want %+v", out, back, err, st)
		}
	})
}

// fakeTmuxScript records each call's arguments (their count, then each one
// NUL-terminated) and answers the -P -F queries of Restore as tmux would.
const fakeTmuxScript = `#!/bin/sh
printf '%s\0' "$#" "$@" >> LOG
case "$2" in
new-session) printf '$1\t@1\t0\t%%1\n' ;;
new-window) printf '@2\t%%2\n' ;;
split-window) printf '%%3\n' ;;
list-sessions) printf 'taken\n' ;;
esac
`

// tmuxCalls parses the fake tmux's log into calls.
func tmuxCalls(t *testing.T, log []byte) [][]string {
	fields := strings.Split(string(log), "\x00")
	var calls [][]string
	for i := 0; i+1 < len(fields); {
		n, err := strconv.Atoi(fields[i])
		if err != nil || i+1+n > len(fields)-1 {
			t.Fatalf("fake tmux log is garbled at field %d: %q", i, log)
		}
		calls = append(calls, fields[i+1:i+1+n])
		i += 1 + n
	}
	return calls
}

// literal reports whether s is safe from tmux's format expansion: every
// '#' is doubled.
func literal(s string) bool {
	return !strings.Contains(strings.ReplaceAll(s, "##", ""), "#")
}

// FuzzTmuxRestore: whatever the state file holds (it lives on the guest's
// /root disk, written by anything running as root there), Restore hands
// tmux only literal names and directories (never a format that would run
// a command), a window size tmux takes, layouts that carry their checksum,
// and a number of commands bounded by the sessions, windows and panes.
func FuzzTmuxRestore(f *testing.F) {
	dir := f.TempDir()
	logPath := filepath.Join(dir, "calls")
	bin := filepath.Join(dir, "tmux")
	if err := os.WriteFile(bin, []byte(strings.ReplaceAll(fakeTmuxScript, "LOG", "'"+logPath+"'")), 0o755); err != nil {
		f.Fatal(err)
	}
	state := filepath.Join(dir, "tmux-sessions.json")
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.Cleanup(func() { slog.SetDefault(old) })
	for _, s := range []string{
		`{"version":1,"sessions":[{"name":"keep","windows":[{"index":3,"name":"saved","panes":[{"index":0,"path":"/"}]}]},{"name":"new","windows":[{"index":0,"name":"w","active":true,"panes":[{"index":0,"path":"/","active":true}]}]}]}`,
		`{"version":1,"sessions":[{"name":"s","windows":[{"index":0,"name":"w","layout":"","panes":[{"index":0,"path":"/gone","command":"vim","active":true},{"index":1,"path":"/tmp"},{"index":2,"path":""}]}]}]}`,
		`{"version":1,"sessions":[{"name":"s","windows":[{"index":0,"name":"w","layout":"nonsense","panes":[{"index":0,"path":"/"},{"index":1,"path":"/"}]}]}]}`,
		`{"version":1,"sessions":[{"name":"#(touch /tmp/owned)","windows":[{"index":1,"name":"#{pane_id}#","automatic_rename":true,"layout":"b25d,80x24,0,0,0","panes":[{"index":0,"path":"/tmp"}]}]}]}`,
		`{"version":1,"sessions":[{"name":"taken","windows":[{"index":0,"panes":[]}]},{"name":"t\\\\u\\033","windows":[{"index":-2,"panes":[]},{"index":5,"name":"x","panes":[{"index":9},{"index":1,"active":true}]}]}]}`,
		`{"version":1,"sessions":[{"name":"","windows":[]},{"name":"empty","windows":[]}]}`,
		`{"version":1,"sessions":[`, `{"version":7,"sessions":[]}`, `null`, `{"version":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st tmuxState
		items := 0
		if json.Unmarshal(data, &st) == nil {
			for _, s := range st.Sessions {
				items++
				for _, w := range s.Windows {
					items += 1 + len(w.Panes)
				}
			}
		}
		if items > 40 {
			return // each costs a few processes; a big state only takes longer
		}
		if err := os.WriteFile(state, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(logPath, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		n, _ := Restore(context.Background(), bin, "", state)
		log, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		calls := tmuxCalls(t, log)
		if n < 0 || n > len(st.Sessions) {
			t.Fatalf("Restore(%q) = %d sessions, want 0 to %d", data, n, len(st.Sessions))
		}
		if len(calls) > 2+4*items {
			t.Fatalf("Restore(%q) ran tmux %d times for %d sessions, windows and panes", data, len(calls), items)
		}
		for _, call := range calls {
			if len(call) < 2 || call[0] != "-u" {
				t.Fatalf("Restore(%q) ran tmux %q, want -u COMMAND ...", data, call)
			}
			cmd, args := call[1], call[2:]
			for i := 0; i+1 < len(args); i++ {
				v := args[i+1]
				switch flag := args[i]; {
				case (flag == "-s" && cmd == "new-session" || flag == "-n" || flag == "-c") && !literal(v):
					t.Fatalf("Restore(%q) ran tmux %s %s %q: tmux would expand it as a format", data, cmd, flag, v)
				case flag == "-x" || flag == "-y":
					if d, err := strconv.Atoi(v); err != nil || d < 1 || d > 10000 {
						t.Fatalf("Restore(%q) ran tmux %s %s %q, want 1 to 10000", data, cmd, flag, v)
					}
				}
			}
			if cmd == "select-layout" && len(args) == 3 && args[2] != "tiled" && !tmuxLayoutValid(args[2]) {
				t.Fatalf("Restore(%q) ran tmux select-layout %q without its checksum", data, args[2])
			}
		}
	})
}
