package web

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/banger/banger/internal/rpc"
)

var funcs = template.FuncMap{
	"pathEsc":    url.PathEscape,
	"age":        age,
	"mib":        fmtMiB,
	"bytes":      fmtBytes,
	"ms":         fmtMS,
	"orDash":     orDash,
	"onOff":      onOff,
	"stateClass": stateClass,
	"totalMS":    totalMS,
	"actions":    func(vm rpc.VM, back string) vmActions { return vmActions{VM: vm, Back: back} },
}

// vmActions is the data of the "vm-actions" template: a VM's buttons.
type vmActions struct {
	VM   rpc.VM
	Back string
}

// Startable reports whether the start button makes sense.
func (a vmActions) Startable() bool {
	switch a.VM.State {
	case "running", "creating", "starting", "stopping":
		return false
	}
	return true
}

// age formats the time since t the way ps and docker do: 45s, 12m, 5h, 3d.
func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// fmtMS formats the API's float milliseconds: 0.4s, 12.3s, 2m05s.
func fmtMS(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}

func totalMS(stages []rpc.Stage) float64 {
	var t float64
	for _, s := range stages {
		t += s.DurationMS
	}
	return t
}

// fmtMiB formats a memory size in MiB as the user would type it: 512M, 1G, 1.5G.
func fmtMiB(mib int) string {
	switch {
	case mib <= 0:
		return "-"
	case mib%1024 == 0:
		return fmt.Sprintf("%dG", mib/1024)
	case mib > 1024:
		return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) + "G"
	default:
		return fmt.Sprintf("%dM", mib)
	}
}

// fmtBytes formats a byte count with binary units: 812M, 8.0G.
func fmtBytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	units := "KMGTPE"
	v := float64(n)
	i := -1
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f%c", v, units[i])
	}
	return fmt.Sprintf("%.1f%c", v, units[i])
}

// parseMiB parses a memory size: plain numbers are MiB; M, MB, MiB, G, GB, GiB
// suffixes (any case) are binary units.
func parseMiB(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"gib", 1024}, {"gb", 1024}, {"g", 1024}, {"mib", 1}, {"mb", 1}, {"m", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || t == "" || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("memory %q is not a size: use MiB (1024) or a unit (512M, 2G)", s)
	}
	mib := v * mult
	if mib < 1 || mib != math.Trunc(mib) || mib > math.MaxInt32 {
		return 0, fmt.Errorf("memory %q is not a whole positive number of MiB: use for example 512M or 2G", s)
	}
	return int(mib), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// stateClass names the badge color of a VM state.
func stateClass(state string) string {
	switch state {
	case "running":
		return "running"
	case "stopped", "":
		return "stopped"
	case "error", "failed":
		return "error"
	default:
		return "busy"
	}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.+@%/:=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tailWriter keeps the last max lines written to it, each cut to maxLine bytes.
type tailWriter struct {
	max, maxLine int
	lines        []string
	partial      []byte
}

func newTailWriter(lines int) *tailWriter { return &tailWriter{max: lines, maxLine: 4096} }

func (t *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.appendPartial(p)
			break
		}
		t.appendPartial(p[:i])
		t.push(string(t.partial))
		t.partial = t.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (t *tailWriter) appendPartial(p []byte) {
	if room := t.maxLine - len(t.partial); room > 0 {
		t.partial = append(t.partial, p[:min(room, len(p))]...)
	}
}

func (t *tailWriter) push(line string) {
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

// Lines returns the kept lines, the unfinished last one included, cleaned of
// terminal escape sequences and control characters.
func (t *tailWriter) Lines() []string {
	all := append([]string(nil), t.lines...)
	if len(t.partial) > 0 {
		all = append(all, string(t.partial))
		if len(all) > t.max {
			all = all[1:]
		}
	}
	for i, l := range all {
		all[i] = cleanConsole(l)
	}
	return all
}

// cleanConsole removes ANSI escape sequences, carriage returns and other
// control characters from a console line, and invalid UTF-8.
func cleanConsole(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == 0x1b && i+1 < len(s) && s[i+1] == '[': // CSI: ESC [ params final
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j + 1
		case c == 0x1b && i+1 < len(s) && s[i+1] == ']': // OSC: ESC ] ... BEL or ESC \
			j := i + 2
			for j < len(s) && s[j] != 0x07 && !(s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\') {
				j++
			}
			if j < len(s) && s[j] == 0x1b {
				j++
			}
			i = j + 1
		case c == 0x1b:
			i += 2
		case c == '\t':
			b.WriteByte(c)
			i++
		case c < 0x20 || c == 0x7f:
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r >= 0x80 && r < 0xa0 { // C1 controls
				i += size
				continue
			}
			b.WriteString(s[i : i+size])
			i += size
		}
	}
	return b.String()
}
