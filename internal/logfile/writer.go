package logfile

import (
	"io"
	"unicode"
	"unicode/utf8"
)

// CleanWriter passes a hostile byte stream (a guest's console) to a
// terminal: valid UTF-8 text, newlines and tabs go through; escape
// sequences, carriage returns, bells and other control characters do not
// (ESC shows as ^[, invalid bytes as U+FFFD). A character split across
// writes is held until its rest arrives.
type CleanWriter struct {
	W       io.Writer
	pending []byte
}

// Write implements io.Writer; it reports all of p as written when W took
// the cleaned text.
func (c *CleanWriter) Write(p []byte) (int, error) {
	data := p
	if len(c.pending) > 0 {
		data = append(c.pending, p...)
		c.pending = nil
	}
	out := make([]byte, 0, len(data))
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(data) {
				c.pending = append(c.pending[:0], data...)
				break
			}
			out = append(out, "\uFFFD"...)
			data = data[1:]
			continue
		}
		switch {
		case r == '\n', r == '\t':
			out = append(out, byte(r))
		case r == 0x1b:
			out = append(out, '^', '[')
		case r < 0x20, r == 0x7f, unicode.Is(unicode.Cc, r):
			// dropped: carriage returns, bells, backspaces, C1 controls
		default:
			out = append(out, data[:size]...)
		}
		data = data[size:]
	}
	if _, err := c.W.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what a stream cut in the middle of a character left held,
// as U+FFFD.
func (c *CleanWriter) Flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	c.pending = nil
	_, err := io.WriteString(c.W, "\uFFFD")
	return err
}
