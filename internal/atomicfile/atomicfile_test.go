package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	tests := []struct {
		data string
		perm os.FileMode
	}{
		{"first\n", 0o600},
		{"second, longer than the first\n", 0o644},
		{"", 0o600},
	}
	for _, tt := range tests {
		if err := Write(path, []byte(tt.data), tt.perm); err != nil {
			t.Fatalf("Write(%q): %v", tt.data, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != tt.data {
			t.Fatalf("after Write(%q): read %q, %v", tt.data, got, err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != tt.perm {
			t.Errorf("mode = %v, want %v", fi.Mode().Perm(), tt.perm)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the file (no temporaries)", len(ents))
	}
	err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), "writing "+filepath.Join(dir, "missing", "f")) {
		t.Errorf("Write into a missing directory = %v, want an error naming the file", err)
	}
}

// TestWriteUnsynced: the same replacement, without the syncs.
func TestWriteUnsynced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "machine-id")
	for _, data := range []string{"old\n", "new\n"} {
		if err := WriteUnsynced(path, []byte(data), 0o444); err != nil {
			t.Fatalf("WriteUnsynced(%q): %v", data, err)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != data {
			t.Fatalf("after WriteUnsynced(%q): read %q, %v", data, got, err)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o444 {
		t.Errorf("mode = %v, want 0444", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the file", len(ents))
	}
	if err := WriteUnsynced(filepath.Join(dir, "nosuch", "f"), nil, 0o600); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("WriteUnsynced into a missing directory = %v, want an error naming it", err)
	}
}
