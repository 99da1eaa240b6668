package logfile

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestTail(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	big := strings.Repeat("x", 100) + "\n" + strings.Repeat("filler line\n", 1000) + "last one\n"
	for _, tt := range []struct {
		name     string
		path     string
		offset   int64
		n, bytes int
		want     []string
	}{
		{"last lines", write("a", "one\ntwo\nthree\n"), 0, 2, 1000, []string{"two", "three"}},
		{"all", write("b", "one\ntwo"), 0, 0, 1000, []string{"one", "two"}},
		{"after offset", write("c", "old\nnew\n"), 4, 10, 1000, []string{"new"}},
		{"bounded read drops the cut line", write("d", big), 0, 3, 30, []string{"filler line", "last one"}},
		{"hostile console", write("e", "ok\x1b[31mred\x07\r\n\ttab\xff\n"), 0, 5, 1000, []string{"ok[31mred", " tab\uFFFD"}},
		{"empty", write("f", "\n\n"), 0, 5, 1000, nil},
		{"missing", filepath.Join(dir, "none"), 0, 5, 1000, nil},
	} {
		if got := Tail(tt.path, tt.offset, tt.n, tt.bytes); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Tail(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
