package proc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
)

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStartReportsHowAChildEnded(t *testing.T) {
	for _, tt := range []struct {
		name string
		argv []string
		kill bool
		want string
	}{
		{"exit status", []string{"sh", "-c", "exit 3"}, false, "exit status 3"},
		{"clean", []string{"true"}, false, "exit status 0"},
		{"sigkill", []string{"sleep", "30"}, true, "killed by signal 9 (SIGKILL)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Start(exec.Command(tt.argv[0], tt.argv[1:]...))
			if err != nil {
				t.Fatal(err)
			}
			if tt.kill {
				if err := p.Kill(0, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			waitDone(t, p)
			e, ok := p.Exit()
			if !ok || e.String() != tt.want {
				t.Errorf("Exit() = %v, %v; want %q", e, ok, tt.want)
			}
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Errorf("Signal after the exit = %v, want nil", err)
			}
		})
	}
}

// TestAdoptedChild: a process that daemonizes (forks and its parent exits)
// is reparented to a subreaper, which learns how it ended.
func TestAdoptedChild(t *testing.T) {
	if err := BecomeSubreaper(); err != nil {
		t.Skipf("no PR_SET_CHILD_SUBREAPER: %v", err)
	}
	out, err := exec.Command("sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	deadline := time.Now().Add(5 * time.Second)
	for parentOf(pid) != os.Getpid() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !p.adopted {
		t.Fatalf("pid %d (parent %d) not seen as adopted by %d", pid, parentOf(pid), os.Getpid())
	}
	if _, ok := p.Exit(); ok {
		t.Fatal("Exit() known while it runs")
	}
	syscall.Kill(pid, syscall.SIGKILL) // someone else kills it
	waitDone(t, p)
	if e, ok := p.Exit(); !ok || e.Signal != syscall.SIGKILL {
		t.Errorf("Exit() of an adopted child killed by SIGKILL = %v, %v", e, ok)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("pid %d was not reaped (a zombie is left)", pid)
	}
}

func TestOpenRefusesTheGone(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cmd.Process.Pid); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Open(exited pid) = %v, want ErrNotRunning", err)
	}
	if _, err := Open(0); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Open(0) = %v, want ErrNotRunning", err)
	}
}

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content string
		want          int
		notRunning    bool
	}{
		{"ok", "1234\n", 1234, false},
		{"spaces", "  77 ", 77, false},
		{"empty", "", 0, true},
		{"garbage", "qemu\n", 0, true},
		{"negative", "-5", 0, true},
		{"missing", "", 0, true},
	} {
		p := filepath.Join(dir, tt.name)
		if tt.name != "missing" {
			os.WriteFile(p, []byte(tt.content), 0o600)
		}
		got, err := ReadPIDFile(p)
		if got != tt.want || errors.Is(err, hypervisor.ErrNotRunning) != tt.notRunning {
			t.Errorf("ReadPIDFile(%s) = %d, %v; want %d, not running %v", tt.name, got, err, tt.want, tt.notRunning)
		}
	}
}

func TestAdoptChecksIdentity(t *testing.T) {
	p, err := Start(exec.Command("sleep", "30"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill(0, 5*time.Second)
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := WritePIDFile(pidFile, p.PID()); err != nil {
		t.Fatal(err)
	}
	isSleep := func(args []string) (bool, string) {
		if filepath.Base(args[0]) == "sleep" {
			return true, ""
		}
		return false, args[0] + " is not sleep"
	}
	got, err := Adopt(pidFile, isSleep)
	if err != nil || got.PID() != p.PID() {
		t.Fatalf("Adopt = %v, %v; want pid %d", got, err, p.PID())
	}
	got.Close()
	if _, err := Adopt(pidFile, func([]string) (bool, string) { return false, "another program" }); !errors.Is(err, hypervisor.ErrNotRunning) || !strings.Contains(err.Error(), "another program") {
		t.Errorf("Adopt of a reused pid = %v, want ErrNotRunning saying why", err)
	}
}
