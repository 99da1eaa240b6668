package runner

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tool writes an executable script named name into dir.
func tool(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho ran-$0 \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLookPath(t *testing.T) {
	pathDir, sbin, other := t.TempDir(), t.TempDir(), t.TempDir()
	inPath := tool(t, pathDir, "inpath")
	both := tool(t, pathDir, "both")
	tool(t, sbin, "both")
	onlySbin := tool(t, sbin, "onlysbin")
	if err := os.WriteFile(filepath.Join(sbin, "notexec"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", pathDir+":"+other)
	old := SystemDirs
	SystemDirs = []string{filepath.Join(other, "missing"), sbin}
	t.Cleanup(func() { SystemDirs = old })

	for _, tt := range []struct {
		name, want string
	}{
		{"inpath", inPath},
		{"both", both}, // PATH wins
		{"onlysbin", onlySbin},
		{onlySbin, onlySbin},
		{"notexec", ""},
		{"nope", ""},
		{filepath.Join(other, "nope"), ""},
	} {
		got, err := LookPath(tt.name)
		if tt.want == "" {
			if err == nil || !errors.Is(err, exec.ErrNotFound) {
				t.Errorf("LookPath(%q) = %q, %v; want exec.ErrNotFound", tt.name, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("LookPath(%q) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// TestRunFindsSystemDirs runs a tool that is only in a system directory,
// as a user whose PATH lacks /usr/sbin would.
func TestRunFindsSystemDirs(t *testing.T) {
	sbin := t.TempDir()
	p := tool(t, sbin, "sbintool")
	t.Setenv("PATH", "/usr/bin:/bin")
	old := SystemDirs
	SystemDirs = []string{sbin}
	t.Cleanup(func() { SystemDirs = old })
	out, err := Exec{}.Run(context.Background(), "sbintool", "a", "b")
	if err != nil || strings.TrimSpace(string(out)) != "ran-"+p+" a b" {
		t.Fatalf("Run(sbintool) = %q, %v; want it run by absolute path", out, err)
	}
	_, err = Exec{}.Run(context.Background(), "surely-not-a-tool")
	if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), "surely-not-a-tool") {
		t.Fatalf("Run(missing) = %v, want a not-found error naming it", err)
	}
}

func TestRunErrorsCarryOutput(t *testing.T) {
	_, err := Exec{}.Run(context.Background(), "sh", "-c", "echo oops >&2; exit 3")
	if err == nil || !strings.Contains(err.Error(), "oops") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Run(failing) = %v, want stderr and status in the error", err)
	}
	long := strings.Repeat("x", 5000)
	_, err = Exec{}.Run(context.Background(), "sh", "-c", "exit 1", long)
	if err == nil || len(err.Error()) > 1000 {
		t.Fatalf("Run with a 5 kB argv: error of %d bytes, want it bounded", len(err.Error()))
	}
}

func TestSudoError(t *testing.T) {
	for _, tt := range []struct {
		msg      string
		detached bool
		want     error
		advice   string
	}{
		{"sudo -n -- /usr/bin/ip link: exit status 1: sudo: a password is required", false, ErrSudoPassword, "sudo -v"},
		{"sudo -n -- /usr/bin/ip link: exit status 1: sudo: a password is required", true, ErrSudoPassword, "banger sudoers"},
		{"sudo: Sorry, user dev is not allowed to execute '/usr/sbin/nft list tables' as root on host.", true, ErrSudoDenied, "banger sudoers"},
		{"dev is not in the sudoers file.", false, ErrSudoDenied, "banger sudoers"},
		{"ip link add: exit status 2: RTNETLINK answers: File exists", false, nil, ""},
	} {
		err := Exec{Detached: tt.detached}.sudoError("/usr/bin/ip", errors.New(tt.msg))
		if tt.want == nil {
			if err != nil {
				t.Errorf("sudoError(%q) = %v, want nil (the command's own failure)", tt.msg, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.advice) || !strings.Contains(err.Error(), "/usr/bin/ip") {
			t.Errorf("sudoError(%q, detached=%v) = %v, want %v with %q", tt.msg, tt.detached, err, tt.want, tt.advice)
		}
	}
}
