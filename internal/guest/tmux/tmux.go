// Package tmux saves root's tmux sessions in a guest and recreates them after the VM boots again (banger's own take on tmux-resurrect and tmux-continuum).
package tmux

// A small tmux-resurrect / tmux-continuum equivalent: Save records the
// layout of a running tmux server (sessions, windows, panes and their
// working directories) in a JSON file on the VM's persistent /root disk, and
// Restore recreates it, detached, after the VM boots again.
//
// Only the structure comes back: every restored pane runs a fresh shell in
// its saved directory. The programs that ran in the panes are recorded
// ("command") but deliberately never re-run, not even "safe" ones such as
// vim, less or htop: their state was in RAM and is gone; tmux only knows the
// program's name, not its arguments, so an editor would come back without
// its files; and running commands as root from a file at boot is a risk
// that such a convenience does not justify.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/atomicfile"
)

// DefaultStateFile is where tmux-save and tmux-restore keep root's
// sessions: /root is the VM's own disk, which survives a stop.
const DefaultStateFile = "/root/.local/share/banger/tmux-sessions.json"

// tmuxStateVersion is the version of the state file's format.
const tmuxStateVersion = 1

// tmuxState is the state file.
type tmuxState struct {
	Version  int           `json:"version"`
	Sessions []tmuxSession `json:"sessions"`
}

type tmuxSession struct {
	// Name is the name as tmux prints it: tmux stores session names
	// escaped (vis(3) C style: a tab is "\t", a backslash "\\").
	Name    string       `json:"name"`
	Windows []tmuxWindow `json:"windows"`
}

type tmuxWindow struct {
	Index           int        `json:"index"`
	Name            string     `json:"name"`
	Layout          string     `json:"layout"`
	Active          bool       `json:"active"`
	AutomaticRename bool       `json:"automatic_rename"`
	Panes           []tmuxPane `json:"panes"`
}

type tmuxPane struct {
	Index int    `json:"index"`
	Path  string `json:"path"`
	// Command is informational: restore never runs it (see above).
	Command string `json:"command"`
	Active  bool   `json:"active"`
}

// tmuxPaneFields are the list-panes format variables, in parse order.
var tmuxPaneFields = []string{
	"session_name",
	"window_index",
	"window_name",
	"window_layout",
	"window_active",
	"automatic-rename",
	"pane_index",
	"pane_current_path",
	"pane_active",
	"pane_current_command",
}

// errTmuxNoServer reports that no tmux server listens on the socket.
var errTmuxNoServer = errors.New("no tmux server running")

// Save writes the sessions, windows and panes of the tmux server on
// socket (tmux's default server when socket is "") to stateFile. With no
// server running, or a server without sessions, stateFile is left as it is
// (as tmux-continuum does), so that the last save survives quitting tmux.
// The file is only rewritten when its content changes.
func Save(ctx context.Context, tmuxBin, socket, stateFile string) error {
	if tmuxBin == "" {
		tmuxBin = "tmux"
	}
	// Window names and paths reach us unescaped (tabs and newlines
	// included) under tmux -u, so fields and records are delimited by
	// random tokens rather than by a character a name could hold.
	tok := rand.Text()
	sep, end := "<banger-sep-"+tok+">", "<banger-end-"+tok+">"
	vars := make([]string, len(tmuxPaneFields))
	for i, f := range tmuxPaneFields {
		vars[i] = "#{" + f + "}"
	}
	out, err := runTmux(ctx, tmuxBin, socket, "list-panes", "-a", "-F", strings.Join(vars, sep)+end)
	if errors.Is(err, errTmuxNoServer) {
		slog.Debug("no tmux server running, keeping the saved sessions", "state", stateFile)
		return nil
	}
	if err != nil {
		return fmt.Errorf("saving tmux sessions to %s: %w", stateFile, err)
	}
	st, err := parseTmuxPanes(out, sep, end)
	if err != nil {
		return fmt.Errorf("saving tmux sessions to %s: %w", stateFile, err)
	}
	if len(st.Sessions) == 0 {
		return nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		return fmt.Errorf("saving tmux sessions to %s: %w", stateFile, err)
	}
	if old, err := os.ReadFile(stateFile); err == nil && bytes.Equal(old, buf.Bytes()) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(stateFile), 0o700); err != nil {
		return fmt.Errorf("saving tmux sessions: %w", err)
	}
	if err := atomicfile.Write(stateFile, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("saving tmux sessions to %s: %w", stateFile, err)
	}
	return nil
}

// parseTmuxPanes parses list-panes output whose fields (tmuxPaneFields) are
// separated by sep and whose records end with end and a newline.
func parseTmuxPanes(out, sep, end string) (tmuxState, error) {
	st := tmuxState{Version: tmuxStateVersion}
	records := strings.Split(out, end+"\n")
	if last := records[len(records)-1]; last != "" {
		return st, fmt.Errorf("parsing tmux list-panes output: unterminated record %q", last)
	}
	sessions := map[string]int{}
	windows := map[string]map[int]int{}
	for _, rec := range records[:len(records)-1] {
		f := strings.Split(rec, sep)
		if len(f) != len(tmuxPaneFields) {
			return st, fmt.Errorf("parsing tmux list-panes output: record %q has %d fields, want %d", rec, len(f), len(tmuxPaneFields))
		}
		winIdx, err := strconv.Atoi(f[1])
		if err != nil {
			return st, fmt.Errorf("parsing tmux list-panes output: window index of session %q: %w", f[0], err)
		}
		paneIdx, err := strconv.Atoi(f[6])
		if err != nil {
			return st, fmt.Errorf("parsing tmux list-panes output: pane index in window %d of session %q: %w", winIdx, f[0], err)
		}
		si, ok := sessions[f[0]]
		if !ok {
			si = len(st.Sessions)
			sessions[f[0]] = si
			windows[f[0]] = map[int]int{}
			st.Sessions = append(st.Sessions, tmuxSession{Name: f[0]})
		}
		s := &st.Sessions[si]
		wi, ok := windows[f[0]][winIdx]
		if !ok {
			wi = len(s.Windows)
			windows[f[0]][winIdx] = wi
			s.Windows = append(s.Windows, tmuxWindow{
				Index:           winIdx,
				Name:            f[2],
				Layout:          f[3],
				Active:          f[4] == "1",
				AutomaticRename: f[5] == "1" || f[5] == "on",
			})
		}
		w := &s.Windows[wi]
		w.Panes = append(w.Panes, tmuxPane{Index: paneIdx, Path: f[7], Active: f[8] == "1", Command: f[9]})
	}
	for i := range st.Sessions {
		sortTmuxWindows(st.Sessions[i].Windows)
	}
	return st, nil
}

func sortTmuxWindows(ws []tmuxWindow) {
	slices.SortStableFunc(ws, func(a, b tmuxWindow) int { return a.Index - b.Index })
	for i := range ws {
		slices.SortStableFunc(ws[i].Panes, func(a, b tmuxPane) int { return a.Index - b.Index })
	}
}

// Restore recreates, detached, each session saved in stateFile that the
// tmux server on socket (tmux's default server when socket is "") does not
// have, starting the server if needed, and returns how many sessions it
// created. A missing stateFile restores nothing. Panes run a fresh shell in
// their saved directory, or in $HOME (else /root) when that is gone. A
// session that fails is reported and the others are still restored.
func Restore(ctx context.Context, tmuxBin, socket, stateFile string) (int, error) {
	if tmuxBin == "" {
		tmuxBin = "tmux"
	}
	data, err := os.ReadFile(stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading tmux state %s: %w", stateFile, err)
	}
	var st tmuxState
	if err := json.Unmarshal(data, &st); err != nil {
		return 0, fmt.Errorf("parsing tmux state %s: %w", stateFile, err)
	}
	if st.Version != tmuxStateVersion {
		return 0, fmt.Errorf("parsing tmux state %s: unsupported version %d, want %d", stateFile, st.Version, tmuxStateVersion)
	}
	existing := map[string]bool{}
	out, err := runTmux(ctx, tmuxBin, socket, "list-sessions", "-F", "#{session_name}")
	if err != nil && !errors.Is(err, errTmuxNoServer) {
		return 0, fmt.Errorf("restoring tmux sessions from %s: %w", stateFile, err)
	}
	for _, name := range strings.Split(out, "\n") {
		if name != "" {
			existing[name] = true
		}
	}
	home := tmuxHomeDir()
	n := 0
	var errs []error
	for _, s := range st.Sessions {
		if existing[s.Name] {
			slog.Info("tmux session exists, not restoring it", "session", s.Name)
			continue
		}
		created, err := restoreTmuxSession(ctx, tmuxBin, socket, s, home)
		if created {
			n++
			existing[s.Name] = true
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restoring tmux session %q from %s: %w", s.Name, stateFile, err))
		}
	}
	return n, errors.Join(errs...)
}

// restoreTmuxSession creates session s and reports whether it did, even
// when a later step failed. Windows and panes are addressed by the ids tmux
// prints, so neither the names nor the base-index options matter.
func restoreTmuxSession(ctx context.Context, bin, socket string, s tmuxSession, home string) (bool, error) {
	if s.Name == "" {
		return false, errors.New("session has no name")
	}
	if len(s.Windows) == 0 {
		return false, errors.New("session has no windows")
	}
	wins := slices.Clone(s.Windows)
	for i := range wins {
		wins[i].Panes = slices.Clone(wins[i].Panes)
		if len(wins[i].Panes) == 0 {
			wins[i].Panes = []tmuxPane{{Path: home, Active: true}}
		}
	}
	sortTmuxWindows(wins)
	first := wins[0]
	// tmux stores the name escaped and escapes what it is given, so the
	// saved name is unescaped first; -s, -n and -c are format-expanded.
	args := []string{"new-session", "-d", "-s", tmuxLiteral(tmuxUnvis(s.Name)),
		"-P", "-F", "#{session_id}\t#{window_id}\t#{window_index}\t#{pane_id}"}
	if w, h, ok := tmuxLayoutSize(first.Layout); ok && tmuxLayoutValid(first.Layout) {
		args = append(args, "-x", strconv.Itoa(w), "-y", strconv.Itoa(h))
	}
	args = append(args, tmuxWindowArgs(first, home)...)
	out, err := runTmux(ctx, bin, socket, args...)
	if err != nil {
		return false, fmt.Errorf("creating session: %w", err)
	}
	ids := strings.Split(strings.TrimSpace(out), "\t")
	if len(ids) != 4 {
		return true, fmt.Errorf("creating session: unexpected tmux output %q", out)
	}
	sid, wid, widx, pid := ids[0], ids[1], ids[2], ids[3]
	if widx != strconv.Itoa(first.Index) {
		if _, err := runTmux(ctx, bin, socket, "move-window", "-d", "-s", wid, "-t", fmt.Sprintf("%s:%d", sid, first.Index)); err != nil {
			return true, fmt.Errorf("moving window %s to index %d: %w", wid, first.Index, err)
		}
	}
	activeWin := wid
	if err := restoreTmuxWindow(ctx, bin, socket, wid, pid, first, home); err != nil {
		return true, err
	}
	for _, w := range wins[1:] {
		args := append([]string{"new-window", "-d", "-t", fmt.Sprintf("%s:%d", sid, w.Index),
			"-P", "-F", "#{window_id}\t#{pane_id}"}, tmuxWindowArgs(w, home)...)
		out, err := runTmux(ctx, bin, socket, args...)
		if err != nil {
			return true, fmt.Errorf("creating window %d: %w", w.Index, err)
		}
		ids := strings.Split(strings.TrimSpace(out), "\t")
		if len(ids) != 2 {
			return true, fmt.Errorf("creating window %d: unexpected tmux output %q", w.Index, out)
		}
		if err := restoreTmuxWindow(ctx, bin, socket, ids[0], ids[1], w, home); err != nil {
			return true, err
		}
		if w.Active {
			activeWin = ids[0]
		}
	}
	if _, err := runTmux(ctx, bin, socket, "select-window", "-t", activeWin); err != nil {
		return true, fmt.Errorf("selecting window %s: %w", activeWin, err)
	}
	return true, nil
}

// restoreTmuxWindow adds the panes after the first to the new window wid,
// whose first pane is pid, and applies the saved layout and options.
func restoreTmuxWindow(ctx context.Context, bin, socket, wid, pid string, w tmuxWindow, home string) error {
	// Each pane splits the previous one, so tmux lists the panes in
	// creation order, the order in which select-layout assigns them to
	// the layout's cells.
	panes := []string{pid}
	for _, p := range w.Panes[1:] {
		out, err := runTmux(ctx, bin, socket, "split-window", "-d", "-t", panes[len(panes)-1],
			"-c", tmuxLiteral(tmuxStartDir(p.Path, home)), "-P", "-F", "#{pane_id}")
		if err != nil {
			return fmt.Errorf("creating pane %d of window %d: %w", p.Index, w.Index, err)
		}
		panes = append(panes, strings.TrimSpace(out))
		// Spread the panes out so that the next split has room.
		if _, err := runTmux(ctx, bin, socket, "select-layout", "-t", wid, "tiled"); err != nil {
			return fmt.Errorf("laying out window %d: %w", w.Index, err)
		}
	}
	// A layout tmux rejects only costs the arrangement of the panes.
	switch {
	case w.Layout == "":
	case !tmuxLayoutValid(w.Layout):
		slog.Warn("not restoring invalid tmux window layout", "window", w.Index, "layout", w.Layout)
	default:
		if _, err := runTmux(ctx, bin, socket, "select-layout", "-t", wid, w.Layout); err != nil {
			slog.Warn("restoring tmux window layout", "window", w.Index, "err", err)
		}
	}
	if w.AutomaticRename {
		// new-window -n turned it off.
		if _, err := runTmux(ctx, bin, socket, "set-option", "-w", "-t", wid, "automatic-rename", "on"); err != nil {
			return fmt.Errorf("setting automatic-rename on window %d: %w", w.Index, err)
		}
	}
	for i, p := range w.Panes {
		if p.Active {
			if _, err := runTmux(ctx, bin, socket, "select-pane", "-t", panes[i]); err != nil {
				return fmt.Errorf("selecting pane %d of window %d: %w", p.Index, w.Index, err)
			}
		}
	}
	return nil
}

// tmuxWindowArgs are the new-session or new-window arguments giving the
// window w's name and its first pane's directory.
func tmuxWindowArgs(w tmuxWindow, home string) []string {
	args := []string{"-c", tmuxLiteral(tmuxStartDir(w.Panes[0].Path, home))}
	if w.Name != "" {
		args = append(args, "-n", tmuxLiteral(w.Name))
	}
	return args
}

// tmuxStartDir is path when it is still a directory, home otherwise.
func tmuxStartDir(path, home string) string {
	if path != "" {
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			return path
		}
	}
	return home
}

// tmuxHomeDir is $HOME when it is a directory, /root otherwise (a system
// service has no $HOME unless given a User=).
func tmuxHomeDir() string {
	if h := os.Getenv("HOME"); h != "" {
		if fi, err := os.Stat(h); err == nil && fi.IsDir() {
			return h
		}
	}
	return "/root"
}

// tmuxLiteral protects s from tmux's format expansion (which would run
// "#(command)"), applied to new-session -s and to -n and -c.
func tmuxLiteral(s string) string {
	return strings.ReplaceAll(s, "#", "##")
}

// tmuxUnvis undoes the escaping tmux applies to session names
// (vis(3) with VIS_OCTAL|VIS_CSTYLE|VIS_TAB|VIS_NL). Unknown escapes are
// kept as they are.
func tmuxUnvis(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	cstyle := map[byte]byte{'\\': '\\', 'n': '\n', 't': '\t', 'r': '\r', 'b': '\b', 'a': '\a', 'v': '\v', 'f': '\f', 's': ' '}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		if c, ok := cstyle[s[i+1]]; ok {
			b.WriteByte(c)
			i++
			continue
		}
		j := i + 1
		v := 0
		for j < len(s) && j < i+4 && s[j] >= '0' && s[j] <= '7' {
			v = v*8 + int(s[j]-'0')
			j++
		}
		if j == i+1 || v > 0xff {
			b.WriteByte(s[i])
			continue
		}
		b.WriteByte(byte(v))
		i = j - 1
	}
	return b.String()
}

// tmuxLayoutValid reports whether layout starts with its checksum, as
// tmux prints layouts ("b25d,80x24,0,0,0"). tmux 3.3a checks the checksum
// itself, but its server crashes on a layout that does not start with one.
func tmuxLayoutValid(layout string) bool {
	if len(layout) < 6 || layout[4] != ',' {
		return false
	}
	want, err := strconv.ParseUint(layout[:4], 16, 16)
	if err != nil {
		return false
	}
	var sum uint16
	for _, c := range []byte(layout[5:]) {
		sum = sum>>1 + sum&1<<15
		sum += uint16(c)
	}
	return uint64(sum) == want
}

// tmuxLayoutSize returns the window size recorded in a tmux layout
// ("csum,WxH,X,Y...").
func tmuxLayoutSize(layout string) (w, h int, ok bool) {
	_, rest, found := strings.Cut(layout, ",")
	if !found {
		return 0, 0, false
	}
	size, _, _ := strings.Cut(rest, ",")
	ws, hs, found := strings.Cut(size, "x")
	if !found {
		return 0, 0, false
	}
	w, err1 := strconv.Atoi(ws)
	h, err2 := strconv.Atoi(hs)
	if err1 != nil || err2 != nil || w < 1 || h < 1 || w > 10000 || h > 10000 {
		return 0, 0, false
	}
	return w, h, true
}

// runTmux runs tmux with args on socket and returns its standard output.
// The process environment is passed on untouched: a server this starts
// gives it to the shells in its panes. -u keeps non-ASCII names and paths
// intact without a UTF-8 locale (a systemd service has none).
func runTmux(ctx context.Context, bin, socket string, args ...string) (string, error) {
	full := []string{"-u"}
	if socket != "" {
		full = append(full, "-S", socket)
	}
	cmd := exec.CommandContext(ctx, bin, append(full, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A server this starts must not hold the output pipes open.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		// "server exited unexpectedly": the server was exiting (or crashed).
		if strings.HasPrefix(msg, "no server running on ") || msg == "server exited unexpectedly" ||
			(strings.HasPrefix(msg, "error connecting to ") && strings.HasSuffix(msg, "(No such file or directory)")) {
			return "", fmt.Errorf("tmux %s: %w: %s", args[0], errTmuxNoServer, msg)
		}
		if msg != "" {
			return "", fmt.Errorf("tmux %s: %w: %s", args[0], err, msg)
		}
		return "", fmt.Errorf("tmux %s: %w", args[0], err)
	}
	return stdout.String(), nil
}
