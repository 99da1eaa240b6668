package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVoidKernelCheck drives `banger runtime void-kernel --check`, which
// make verify-void uses to refuse a half-staged kernel directory.
func TestVoidKernelCheck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "void-kernel")
	if r := run(t, "runtime", "void-kernel", "--check", "--out", dir); r.code == 0 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("--check of a missing dir: exit %d, stderr %q; want a failure saying it does not exist", r.code, r.stderr)
	}
	if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, "runtime", "void-kernel", "--check", "--out", dir)
	if r.code == 0 || !strings.Contains(r.stderr, "is incomplete (no kernel.json)") || !strings.Contains(r.stderr, "make void-kernel") {
		t.Errorf("--check of a half-staged dir: exit %d, stderr %q; want the incomplete error and the fix", r.code, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("--check of a half-staged dir printed %q, want nothing for the Makefile to eval", r.stdout)
	}
}

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a/b", "'/a/b'"},
		{"it's", `'it'\''s'`},
		{"$(reboot)", "'$(reboot)'"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
