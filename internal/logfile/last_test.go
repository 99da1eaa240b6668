package logfile

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// countingReaderAt counts the bytes read from it.
type countingReaderAt struct {
	r    io.ReaderAt
	read int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.read += int64(n)
	return n, err
}

func TestLastReadsOnlyTheTail(t *testing.T) {
	body := strings.Repeat("filler line\n", 100000) + "second last\nlast\n"
	for _, tc := range []struct {
		name     string
		old, cur string
		max      int64
		want     string
	}{
		{"whole log under max", "a\n", "b\nc\n", 100, "a\nb\nc\n"},
		{"cut in a line drops it", "", "one\ntwo\nthree\n", 8, "three\n"},
		{"cut at a line start keeps it", "", "one\ntwo\nthree\n", 10, "two\nthree\n"},
		{"one long line is kept, cut", "", strings.Repeat("x", 40), 16, strings.Repeat("x", 16)},
		{"short current log reaches into the rotated one", "old one\nold two\n", "new\n", 12, "old two\nnew\n"},
		{"a log far past max", "", body, 17, "second last\nlast\n"},
		{"rotated log far past max", body, "new\n", 9, "last\nnew\n"},
		{"nothing", "", "", 10, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := &countingReaderAt{r: strings.NewReader(tc.old)}
			cur := &countingReaderAt{r: strings.NewReader(tc.cur)}
			got, err := last(io.NewSectionReader(old, 0, int64(len(tc.old))), io.NewSectionReader(cur, 0, int64(len(tc.cur))), tc.max)
			if err != nil || string(got) != tc.want {
				t.Fatalf("last(%d) = %q, %v; want %q", tc.max, got, err, tc.want)
			}
			if read := old.read + cur.read; read > tc.max+1 {
				t.Errorf("last(%d) read %d bytes, want at most %d", tc.max, read, tc.max+1)
			}
		})
	}
}

func TestLastFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	os.WriteFile(path+RotatedSuffix, []byte("old one\nold two\n"), 0o600)
	os.WriteFile(path, []byte("new\n"), 0o600)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, end, err := Last(f, path+RotatedSuffix, 12)
	if err != nil || string(got) != "old two\nnew\n" || end != 4 {
		t.Errorf("Last(12) = %q, %d, %v; want %q, 4", got, end, err, "old two\nnew\n")
	}
	got, _, err = Last(f, filepath.Join(dir, "none"), 100)
	if err != nil || string(got) != "new\n" {
		t.Errorf("Last without a rotated log = %q, %v; want %q", got, err, "new\n")
	}
}
