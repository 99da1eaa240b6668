package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenRefusesDamage: a truncated or damaged database is refused with
// advice, never silently replaced by a fresh one.
func TestOpenRefusesDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string // substring of the error, "" for ok
	}{
		{"intact", func(*testing.T, string) {}, ""},
		{"zero length", func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}, "the file is empty"},
		{"pages 3 to 5 overwritten", func(t *testing.T, path string) {
			overwrite(t, path, 2*4096, 3*4096)
		}, "move it aside"},
		{"header overwritten", func(t *testing.T, path string) {
			overwrite(t, path, 0, 100)
		}, "move it aside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "banger.db")
			populate(t, path)
			tc.damage(t, path)
			s, err := Open(path)
			if err == nil {
				defer s.Close()
				// An intact database still has its VMs.
				if vms, lerr := s.ListVMs(context.Background()); lerr != nil || len(vms) != 40 {
					t.Errorf("ListVMs after reopening = %d VMs, %v; want 40", len(vms), lerr)
				}
			}
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Open(%s) = %v, want %q", tc.name, err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), "mv "+path+" "+path+".broken") {
				t.Errorf("Open(%s) = %v, want the mv advice", tc.name, err)
			}
		})
	}
}

func TestOpenNewDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "banger.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open(new) = %v", err)
	}
	s.Close()
}

// populate makes a database of several pages and closes it, which folds
// the write-ahead log into the file.
func populate(t *testing.T, path string) {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 40 {
		vm := &VM{Name: fmt.Sprintf("vm-%02d-%s", i, strings.Repeat("x", 40)), Image: strings.Repeat("i", 200), IP: fmt.Sprintf("10.0.%d.%d", i/200, 2+i%200), CID: uint32(3 + i)}
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 6*4096 {
		t.Fatalf("populated database: %v, %v; want at least 6 pages", fi, err)
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		t.Fatalf("the write-ahead log outlived Close")
	}
}

func overwrite(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	junk := []byte(strings.Repeat("\xa5banger", int(n)/7+1))[:n]
	if _, err := f.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
}
