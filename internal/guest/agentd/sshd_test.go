package agentd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestInOpen(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{"257 0xffffff9c 0x55d0c1a0 0x0 0x0 0x0 0x0 0x7ffd8a10 0x7f1c2b3d\n", true},
		{"0 0x3 0x7ffd 0x400 0x0 0x0 0x0 0x7ffd 0x7f1c\n", false}, // read
		{"running\n", false},
		{"-1 0x7ffd8a10 0x7f1c2b3d\n", false},
		{"", false},
	} {
		if got := inOpen(tc.line); got != tc.want {
			t.Errorf("inOpen(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

func TestProcState(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want byte
	}{
		{"412 (sshd) S 1 412 412 0 -1", 'S'},
		{"412 (a) b) R 1 412", 'R'}, // comm holding ") "
		{"412 (sshd)", 0},
		{"garbage", 0},
	} {
		if got := procState([]byte(tc.stat)); got != tc.want {
			t.Errorf("procState(%q) = %q, want %q", tc.stat, got, tc.want)
		}
	}
}

// parkee is a stand-in for sshd: on SIGHUP it re-executes itself (the same
// pid) as a reader of fifo, as sshd reads its configuration's Include, and
// then writes done.
func parkee(t *testing.T, fifo, done string, hup bool) *exec.Cmd {
	t.Helper()
	onHup := fmt.Sprintf(`exec sh -c 'read x < %s; echo read > %s'`, fifo, done)
	if !hup {
		onHup = ":"
	}
	cmd := exec.Command("sh", "-c", fmt.Sprintf(`trap "%s" HUP; echo up > %s.up; while :; do sleep 0.01; done`, onHup, done))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for range 500 {
		if _, err := os.Stat(done + ".up"); err == nil {
			return cmd
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the stand-in for sshd did not start")
	return nil
}

func TestSSHDPark(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T, dropIn string) (sshdPark, string) {
		dir := t.TempDir()
		p := sshdPark{dropIn: filepath.Join(dir, "banger.conf"), fifo: filepath.Join(dir, "park", "park.conf"), wait: 5 * time.Second}
		if err := os.WriteFile(p.dropIn, []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
		return p, filepath.Join(dir, "done")
	}
	including := func(p sshdPark) string { return "UseDNS no\n  Include " + filepath.Dir(p.fifo) + "/*.conf\n" }

	t.Run("parks and goes on", func(t *testing.T) {
		p, done := setup(t, "")
		os.WriteFile(p.dropIn, []byte(including(p)), 0o644)
		cmd := parkee(t, p.fifo, done, true)
		if err := p.park(ctx, cmd.Process.Pid); err != nil {
			t.Fatalf("park: %v", err)
		}
		if !p.parked() || !waitingInOpen(cmd.Process.Pid) {
			t.Fatalf("after park: parked %v, waiting in open %v; want both", p.parked(), waitingInOpen(cmd.Process.Pid))
		}
		if _, err := os.Stat(done); err == nil {
			t.Fatal("the parked process read past the pipe before unpark")
		}
		if err := p.park(ctx, cmd.Process.Pid); err != nil || !p.parked() {
			t.Fatalf("park again: %v, parked %v; want a no-op", err, p.parked())
		}
		p.unpark(ctx)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("the unparked process: %v", err)
		}
		if b, err := os.ReadFile(done); err != nil || string(b) != "read\n" {
			t.Errorf("after unpark, the process wrote %q, %v; want it to have read the pipe and gone on", b, err)
		}
		if p.parked() {
			t.Error("the pipe is left after unpark")
		}
	})
	t.Run("a configuration without the include is not parked", func(t *testing.T) {
		p, done := setup(t, "UseDNS no\n# Include elsewhere\n")
		cmd := parkee(t, p.fifo, done, true)
		if err := p.park(ctx, cmd.Process.Pid); err != nil {
			t.Fatalf("park: %v", err)
		}
		if p.parked() {
			t.Error("a pipe was made for an sshd that does not read it")
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := os.Stat(done); err == nil {
			t.Error("the process got SIGHUP")
		}
	})
	t.Run("one that never reaches the pipe is let go", func(t *testing.T) {
		p, done := setup(t, "")
		os.WriteFile(p.dropIn, []byte(including(p)), 0o644)
		p.wait = 300 * time.Millisecond
		cmd := parkee(t, p.fifo, done, false)
		err := p.park(ctx, cmd.Process.Pid)
		if err == nil {
			t.Fatal("park of a process that ignores SIGHUP succeeded")
		}
		if p.parked() {
			t.Errorf("the pipe is left after a failed park (%v)", err)
		}
	})
	t.Run("unpark with nothing waiting", func(t *testing.T) {
		p, _ := setup(t, "")
		p.unpark(ctx) // no pipe at all: returns at once
		os.MkdirAll(filepath.Dir(p.fifo), 0o700)
		os.WriteFile(p.fifo, nil, 0o600) // a file, not a pipe
		if p.parked() {
			t.Error("a regular file counts as the pipe")
		}
	})
}
