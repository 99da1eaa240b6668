// Package logfile reads the end of log files (daemon, hypervisor and guest console logs) by seeking, bounded and cleaned for display.
package logfile

import (
	"bytes"
	"io"
	"os"
	"strings"
	"unicode"
)

// Tail returns the last lines of what path holds after offset (0: the
// whole file), reading at most maxBytes from the end: at most n lines (n <=
// 0: no limit), invalid UTF-8 and control characters replaced, trailing
// space trimmed. A log that cannot be read gives nil. Guest consoles are
// hostile input: nothing they wrote is shown raw.
func Tail(path string, offset int64, n, maxBytes int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	start := offset
	partial := false
	if size := fi.Size(); size-start > int64(maxBytes) {
		start, partial = size-int64(maxBytes), true
	}
	if start < 0 {
		start = 0
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(maxBytes)))
	if err != nil {
		return nil
	}
	if partial {
		// The first line was cut by the limit.
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	data = bytes.TrimRight(data, "\r\n\t ")
	if len(data) == 0 {
		return nil
	}
	lines := strings.Split(string(data), "\n")
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		lines[i] = Clean(l)
	}
	return lines
}

// Clean makes one line safe to print: valid UTF-8, no control characters
// (tabs become spaces), no trailing space.
func Clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || unicode.Is(unicode.Cc, r) }) < 0 {
		return strings.TrimRight(s, " ")
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20, r == 0x7f, unicode.Is(unicode.Cc, r):
			// dropped: escapes, carriage returns, bells
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimRight(b.String(), " ")
}

// TailText is Tail joined into one string with sep between lines.
func TailText(path string, offset int64, n, maxBytes int, sep string) string {
	return strings.Join(Tail(path, offset, n, maxBytes), sep)
}
