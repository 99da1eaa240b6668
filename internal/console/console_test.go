package console

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type step struct {
		write   string // appended to the log before the check ("" writes nothing)
		rewrite bool   // the log is replaced by write instead
		at      float64
		stalled bool
	}
	for _, tt := range []struct {
		name   string
		before string // the log before the boot (an earlier boot's)
		steps  []step
	}{
		{"silent from the start is not judged", "", []step{{at: 5}, {at: 60}}},
		{"silent after a line", "", []step{{write: "[0.1] a\n", at: 1}, {at: 10}, {at: 11, stalled: true}}},
		{"output keeps it alive", "", []step{{write: "[0.1] a\n", at: 9}, {write: "[0.2] b\n", at: 18}, {at: 27}, {at: 28, stalled: true}}},
		{"init reached", "", []step{{write: "[1.0] Run /init as init process\n", at: 1}, {at: 60}}},
		{"marker split across checks", "", []step{{write: "[1.0] Freeing unus", at: 1}, {write: "ed kernel image\n", at: 2}, {at: 60}}},
		{"an earlier boot's marker does not count", "[1.0] Run /init as init process\nlogin:\n", []step{{write: "[0.1] smp: Brought up\n", at: 1}, {at: 12, stalled: true}}},
		// Rotation (the console cap) truncates what the hypervisor appends to.
		{"a truncated log is read again", "an earlier boot, longer than what this one wrote before the cut\n", []step{{rewrite: true, write: "Run /sbin/init as init process\n", at: 1}, {at: 60}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			if tt.before != "" {
				os.WriteFile(path, []byte(tt.before), 0o600)
			}
			w := New(path, "console=ttyS0 panic=1", 10*time.Second, t0)
			for i, s := range tt.steps {
				if s.rewrite {
					os.WriteFile(path, []byte(s.write), 0o600)
				} else if s.write != "" {
					f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
					if err != nil {
						t.Fatal(err)
					}
					f.WriteString(s.write)
					f.Close()
				}
				if got := w.Stalled(at(s.at)); got != s.stalled {
					t.Fatalf("step %d (at %vs): stalled = %v, want %v", i, s.at, got, s.stalled)
				}
			}
		})
	}
	for _, cmdline := range []string{"console=ttyS0 quiet", "loglevel=3 console=ttyS0"} {
		if w := New(filepath.Join(t.TempDir(), "c"), cmdline, time.Second, t0); w != nil || w.Stalled(t0.Add(time.Hour)) {
			t.Errorf("a watch of a kernel with %q: %+v; want none", cmdline, w)
		}
	}
}
