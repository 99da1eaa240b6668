package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSuspendResume has an ordinary user suspend a docker-image VM with a
// process and a tmux session running, restart bangerd while it is
// suspended, and resume it: the same processes are back. vm start on a
// suspended VM resumes it too, and a delete leaves nothing behind.
func TestSuspendResume(t *testing.T) {
	openTUN(t)
	u := newTestUser(t, vmSudoers)
	e := newEnvWith(t, envOpts{user: u, config: defaultConfig})
	vm, _, took := e.createTimed("sus", "--image", "docker")
	t.Logf("%s created sus (docker) in %v", u.Name, took.Round(time.Millisecond))
	sleepPID := strings.TrimSpace(e.ssh("sus", "sh", "-c", "'setsid sleep 8888 >/dev/null 2>&1 < /dev/null & echo $!'"))
	e.ssh("sus", "tmux", "new-session", "-d", "-s", "keep", "sleep 9999")
	panePID := strings.TrimSpace(e.ssh("sus", "tmux", "list-panes", "-t", "keep", "-F", "'#{pane_pid}'"))
	if sleepPID == "" || panePID == "" {
		t.Fatalf("sleep pid %q, tmux pane pid %q", sleepPID, panePID)
	}

	suspend := func(t *testing.T) {
		e := e.with(t)
		start := time.Now()
		e.must("vm", "suspend", "sus")
		t.Logf("suspend in %v", time.Since(start).Round(time.Millisecond))
		if got, err := e.show("sus"); err != nil || got.State != "suspended" || got.PID != 0 {
			t.Fatalf("after suspend: state %s pid %d (%v), want suspended, 0", got.State, got.PID, err)
		}
		if list := e.must("vm", "list"); !strings.Contains(list, "suspended") {
			t.Errorf("vm list does not show sus suspended:\n%s", list)
		}
		if pids := e.hypervisorPIDs(); len(pids) != 0 {
			t.Errorf("hypervisor still running after suspend: %v", pids)
		}
	}
	check := func(t *testing.T) {
		e := e.with(t)
		if got, err := e.show("sus"); err != nil || got.State != "running" || got.IP != vm.IP {
			t.Fatalf("after resume: state %s ip %s (%v), want running at %s", got.State, got.IP, err, vm.IP)
		}
		if out := e.ssh("sus", "ps", "-o", "args=", "-p", sleepPID); !strings.Contains(out, "sleep 8888") {
			t.Errorf("sleep %s after resume: %q", sleepPID, out)
		}
		if out := strings.TrimSpace(e.ssh("sus", "tmux", "list-panes", "-t", "keep", "-F", "'#{pane_pid}'")); out != panePID {
			t.Errorf("tmux session keep after resume: pane pid %q, want %s (the same pane, not a recreated one)", out, panePID)
		}
		if out := e.ssh("sus", "ps", "-o", "args=", "-p", panePID); !strings.Contains(out, "sleep 9999") {
			t.Errorf("tmux pane %s after resume runs %q, want sleep 9999", panePID, out)
		}
	}

	t.Run("suspend, bangerd restart, resume", func(t *testing.T) {
		suspend(t)
		e := e.with(t)
		e.killDaemon()
		e.startDaemon()
		if got, err := e.show("sus"); err != nil || got.State != "suspended" {
			t.Fatalf("after a bangerd restart: state %s (%v), want suspended", got.State, err)
		}
		start := time.Now()
		e.must("vm", "resume", "sus")
		t.Logf("resume in %v", time.Since(start).Round(time.Millisecond))
		check(t)
	})

	t.Run("vm start resumes a suspended VM", func(t *testing.T) {
		suspend(t)
		e.with(t).must("vm", "start", "sus")
		check(t)
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		e := e.with(t)
		suspend(t)
		e.must("vm", "delete", "sus")
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Errorf("dir %s of the deleted suspended VM: %v, want gone", vm.Dir, err)
		}
		if ents, _ := os.ReadDir(filepath.Join(e.root, "data", "banger", "vms")); len(ents) != 0 {
			t.Errorf("VM dirs after delete: %d, want 0", len(ents))
		}
		if pids := e.hypervisorPIDs(); len(pids) != 0 {
			t.Errorf("hypervisors after delete: %v", pids)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if vms, err := e.client().ListVMs(ctx); err != nil || len(vms) != 0 {
			t.Errorf("vms after delete = %v (%v)", vms, err)
		}
	})
}
