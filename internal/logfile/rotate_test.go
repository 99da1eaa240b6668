package logfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		max     int64
		rotated bool
		want    string // what path.1 holds after a rotation
	}{
		{"under the cap", "a\nb\n", 10, false, ""},
		{"at the cap", "0123456789", 10, false, ""},
		{"over: keeps the last whole lines", "line one\nline two\nline three\n", 16, true, "line three\n"},
		{"over, one long line", strings.Repeat("x", 40), 16, true, strings.Repeat("x", 16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			os.WriteFile(path, []byte(tc.content), 0o600)
			got, err := Rotate(path, tc.max)
			if err != nil || got != tc.rotated {
				t.Fatalf("Rotate = %v, %v; want %v", got, err, tc.rotated)
			}
			b, _ := os.ReadFile(path)
			old, oerr := os.ReadFile(path + RotatedSuffix)
			if !tc.rotated {
				if string(b) != tc.content || !os.IsNotExist(oerr) {
					t.Errorf("after no rotation: log %q, .1 %q %v; want the log untouched and no .1", b, old, oerr)
				}
				return
			}
			if len(b) != 0 || string(old) != tc.want {
				t.Errorf("after rotation: log %q, .1 %q; want empty and %q", b, old, tc.want)
			}
			if fi, err := os.Stat(path + RotatedSuffix); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf(".1: %v, %v; want mode 0600", fi, err)
			}
		})
	}
	if rotated, err := Rotate(filepath.Join(t.TempDir(), "missing"), 1); rotated || err != nil {
		t.Errorf("Rotate(missing) = %v, %v; want false, nil", rotated, err)
	}
}

// TestRotateAppendingWriter: a writer holding the log open with O_APPEND,
// as a hypervisor does, goes on writing at the start of the emptied log,
// and the log never holds more than the cap plus one write.
func TestRotateAppendingWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const limit = 4096
	chunk := []byte(strings.Repeat("flood ", 100) + "\n")
	for range 100 {
		w.Write(chunk)
		if _, err := Rotate(path, limit); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{path, path + RotatedSuffix} {
			if fi, err := os.Stat(p); err == nil && fi.Size() > limit+int64(len(chunk)) {
				t.Fatalf("%s is %d bytes, want at most %d", filepath.Base(p), fi.Size(), limit+len(chunk))
			}
		}
	}
	w.Write([]byte("last\n"))
	b, _ := os.ReadFile(path)
	if !bytes.HasSuffix(b, []byte("last\n")) || bytes.Contains(b, []byte{0}) {
		t.Errorf("log after rotations ends %q, want the writer's last line and no holes", b[max(0, len(b)-20):])
	}
}

func TestCleanWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chunks []string
		want   string
	}{
		{"plain", []string{"hello\n\tworld\n"}, "hello\n\tworld\n"},
		{"escapes", []string{"\x1b[2J\x1b]52;c;aGk=\x07x\r\n"}, "^[[2J^[]52;c;aGk=x\n"},
		{"utf-8 split across writes", []string{"caf\xc3", "\xa9 \xe2\x82", "\xac\n"}, "café €\n"},
		{"invalid bytes", []string{"a\xffb\xc3(\n"}, "a\uFFFDb\uFFFD(\n"},
		{"C1 control", []string{"a\u009bb"}, "ab"},
		{"cut mid-character", []string{"ok\xe2\x82"}, "ok\uFFFD"},
	} {
		var out bytes.Buffer
		c := &CleanWriter{W: &out}
		for _, ch := range tc.chunks {
			if n, err := c.Write([]byte(ch)); err != nil || n != len(ch) {
				t.Fatalf("%s: Write = %d, %v", tc.name, n, err)
			}
		}
		c.Flush()
		if out.String() != tc.want {
			t.Errorf("%s: CleanWriter wrote %q, want %q", tc.name, out.String(), tc.want)
		}
	}
}
