package web

import (
	"bytes"
	"html/template"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

var funcs = template.FuncMap{
	"pathEsc":    url.PathEscape,
	"age":        units.Age,
	"mib":        units.MiB,
	"bytes":      units.Bytes,
	"ms":         func(ms float64) string { return units.Duration(units.MS(ms)) },
	"orDash":     orDash,
	"onOff":      onOff,
	"stateClass": stateClass,
	"totalMS":    totalMS,
	"actions":    func(vm rpc.VM, back string) vmActions { return vmActions{VM: vm, Back: back} },
	"port":       portText,
}

// portText is a published port as people read it: 127.0.0.1:8080 -> 80/tcp.
func portText(p rpc.Port) string {
	host := p.HostIP + ":" + strconv.Itoa(p.HostPort)
	if ip, err := netip.ParseAddr(p.HostIP); err == nil {
		host = netip.AddrPortFrom(ip, uint16(p.HostPort)).String()
	}
	return host + " -> " + strconv.Itoa(p.GuestPort) + "/" + p.Proto
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

func totalMS(stages []rpc.Stage) float64 {
	var t float64
	for _, s := range stages {
		t += s.DurationMS
	}
	return t
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
	case "stopped", "suspended", "":
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
