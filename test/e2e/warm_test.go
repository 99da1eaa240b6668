package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// warmConfig lets the daemon snapshot an image after its first cold create.
const warmConfig = "dns_upstreams = []\nwarm_after_create = true\nvcpus = 1\nmemory_mib = 512\n"

// createTimed creates a VM through the CLI and returns its view, the
// CLI's stderr (the progress lines) and the create's wall time.
func (e *env) createTimed(name string, args ...string) (rpc.VM, string, time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	out, errOut, err := e.banger(ctx, append([]string{"vm", "create", "--name", name, "--json"}, args...)...)
	took := time.Since(start)
	if err != nil {
		e.t.Fatalf("vm create %s: %v\nstdout:\n%s\nstderr:\n%s", name, err, out, errOut)
	}
	var vm rpc.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		e.t.Fatalf("decoding create output %q: %v", out, err)
	}
	if vm.State != "running" {
		e.t.Fatalf("vm create %s: state = %q, want running", name, vm.State)
	}
	return vm, errOut, took
}

// uptime is the guest's /proc/uptime in seconds.
func (e *env) uptime(name string) float64 {
	e.t.Helper()
	out := strings.Fields(e.ssh(name, "cat", "/proc/uptime"))
	if len(out) != 2 {
		e.t.Fatalf("/proc/uptime of %s = %q, want two numbers", name, out)
	}
	up, err := strconv.ParseFloat(out[0], 64)
	if err != nil {
		e.t.Fatalf("/proc/uptime of %s = %q: %v", name, out, err)
	}
	return up
}

// stageNames lists a VM's stage names.
func stageNames(vm rpc.VM) []string {
	var names []string
	for _, s := range vm.Stages {
		names = append(names, s.Name)
	}
	return names
}

// identity is what a guest must not share with another.
type identity struct {
	IP, MAC, Hostname, HostKey, MachineID string
}

func (e *env) identity(vm rpc.VM) identity {
	e.t.Helper()
	out := e.ssh(vm.Name, "sh", "-c", "'ip -o -4 addr show eth0; cat /sys/class/net/eth0/address; hostname; cat /etc/ssh/ssh_host_ed25519_key.pub; m=$(cat /etc/machine-id 2>/dev/null); echo ${m:-none}'")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		e.t.Fatalf("identity of %s: %d lines, want 5:\n%s", vm.Name, len(lines), out)
	}
	f := strings.Fields(lines[0])
	if len(f) < 4 {
		e.t.Fatalf("ip addr of %s = %q", vm.Name, lines[0])
	}
	key := strings.Fields(lines[3])
	if len(key) < 2 {
		e.t.Fatalf("host key of %s = %q", vm.Name, lines[3])
	}
	return identity{IP: strings.SplitN(f[3], "/", 2)[0], MAC: lines[1], Hostname: lines[2], HostKey: key[1], MachineID: lines[4]}
}

// TestWarm walks the minimal image through warm starts on one daemon: a
// cold create that snapshots the image in the background, warm creates
// that restore it and give each guest its own identity, a fork of a
// running VM, a snapshot that no longer fits (a cold boot that says why)
// and deletes that leave nothing behind.
func TestWarm(t *testing.T) {
	e := newEnvConfig(t, warmConfig)
	cold, _, coldTook := e.createTimed("cold1", "--image", "minimal")
	t.Logf("cold create in %v, stages %v", coldTook.Round(time.Millisecond), cold.Stages)
	if contains(stageNames(cold), "restoring qemu") {
		t.Fatalf("first create of the image restored a snapshot: stages %v", stageNames(cold))
	}
	// The background snapshot of the first cold create; image warm waits
	// for it and finds the image warm.
	warmOut := e.must("image", "warm", "minimal")
	t.Logf("image warm: %s", strings.TrimSpace(warmOut))
	imgs, err := e.client().ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		if img.Name == "minimal" && img.Warm != "ready" {
			t.Fatalf("image minimal after image warm: warm = %q (%s), want ready", img.Warm, img.WarmReason)
		}
	}
	tmplDir := filepath.Join(e.root, "data", "banger", "templates", "minimal")
	if ents, err := os.ReadDir(tmplDir); err != nil || len(ents) != 1 {
		t.Fatalf("templates of minimal = %v (%v), want one", ents, err)
	}

	// Two warm creates at once.
	var wg sync.WaitGroup
	vms := make([]rpc.VM, 2)
	tooks := make([]time.Duration, 2)
	for i, name := range []string{"w1", "w2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], _, tooks[i] = e.createTimed(name, "--image", "minimal")
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	w1, w2 := vms[0], vms[1]

	t.Run("a warm create is a restore", func(t *testing.T) {
		e := e.with(t)
		for i, vm := range vms {
			t.Logf("warm create %s in %v, stages %v", vm.Name, tooks[i].Round(time.Millisecond), vm.Stages)
			if !contains(stageNames(vm), "restoring qemu") || contains(stageNames(vm), "booting qemu") {
				t.Errorf("warm create %s: stages %v, want a restore and no boot", vm.Name, stageNames(vm))
			}
			// A guest that booted during the create has been up for less
			// than the create took; a restored one carries the template's
			// uptime.
			if up := e.uptime(vm.Name); up <= tooks[i].Seconds() {
				t.Errorf("uptime of %s = %.2fs after a %v create, want more: the guest booted", vm.Name, up, tooks[i])
			}
		}
	})

	t.Run("warm guests are machines of their own", func(t *testing.T) {
		e := e.with(t)
		ids := map[string]identity{}
		for _, vm := range []rpc.VM{cold, w1, w2} {
			id := e.identity(vm)
			t.Logf("%s: %+v", vm.Name, id)
			if id.IP != vm.IP || !strings.EqualFold(id.MAC, vm.MAC) || id.Hostname != vm.Name {
				t.Errorf("%s in the guest: ip %s mac %s hostname %s, want %s %s %s", vm.Name, id.IP, id.MAC, id.Hostname, vm.IP, vm.MAC, vm.Name)
			}
			ids[vm.Name] = id
		}
		a, b := ids["w1"], ids["w2"]
		for _, c := range []struct{ what, x, y string }{
			{"address", a.IP, b.IP}, {"MAC", a.MAC, b.MAC}, {"hostname", a.Hostname, b.Hostname},
			{"host key", a.HostKey, b.HostKey}, {"machine-id", a.MachineID, b.MachineID},
		} {
			if c.x == c.y || c.x == "" {
				t.Errorf("w1 and w2 share their %s %q", c.what, c.x)
			}
		}
		if a.MachineID == ids["cold1"].MachineID {
			t.Errorf("w1 has cold1's machine-id %s", a.MachineID)
		}
		for _, pair := range [][2]rpc.VM{{w1, w2}, {w2, w1}} {
			if got := e.ssh(pair[0].Name, "getent", "hosts", pair[1].Name+".vm"); !strings.Contains(got, pair[1].IP) {
				t.Errorf("%s resolves %s.vm as %q, want %s", pair[0].Name, pair[1].Name, got, pair[1].IP)
			}
			// Reachable by name, and the sshd there is the other VM's.
			got := e.ssh(pair[0].Name, "ssh-keyscan", "-T", "10", "-t", "ed25519", pair[1].Name+".vm")
			if want := ids[pair[1].Name].HostKey; !strings.Contains(got, want) {
				t.Errorf("%s scanning %s.vm: %q, want the host key %s", pair[0].Name, pair[1].Name, got, want)
			}
		}
	})

	t.Run("fork", func(t *testing.T) {
		e := e.with(t)
		e.ssh("w1", "sh", "-c", "'echo forked-file > /root/marker && sync'")
		sleepPID := strings.TrimSpace(e.ssh("w1", "sh", "-c", "'setsid sleep 7777 >/dev/null 2>&1 < /dev/null & echo $!'"))
		start := time.Now()
		out := e.must("vm", "fork", "w1", "f1", "--json")
		t.Logf("fork in %v", time.Since(start).Round(time.Millisecond))
		var f1 rpc.VM
		if err := json.Unmarshal([]byte(out), &f1); err != nil {
			t.Fatalf("decoding fork output %q: %v", out, err)
		}
		if f1.State != "running" || f1.IP == w1.IP {
			t.Fatalf("fork f1: state %s ip %s, want running with an address of its own (w1 has %s)", f1.State, f1.IP, w1.IP)
		}
		if src, err := e.show("w1"); err != nil || src.State != "running" {
			t.Fatalf("w1 after the fork: %+v, %v; want running", src, err)
		}
		if got := strings.TrimSpace(e.ssh("w1", "cat", "/root/marker")); got != "forked-file" {
			t.Errorf("w1's marker after the fork = %q", got)
		}
		if out := e.ssh("w1", "ps", "-o", "pid=,args=", "-p", sleepPID); !strings.Contains(out, "sleep 7777") {
			t.Errorf("w1's sleep %s after the fork: %q", sleepPID, out)
		}
		if got := strings.TrimSpace(e.ssh("f1", "cat", "/root/marker")); got != "forked-file" {
			t.Errorf("f1's copy of the marker = %q, want forked-file", got)
		}
		if out := e.ssh("f1", "ps", "-o", "pid=,args=", "-p", sleepPID); !strings.Contains(out, "sleep 7777") {
			t.Errorf("f1 lacks w1's sleep %s: %q", sleepPID, out)
		}
		fid := e.identity(f1)
		if fid.Hostname != "f1" || fid.IP != f1.IP || fid.MachineID == e.identity(w1).MachineID {
			t.Errorf("f1's identity %+v, want hostname f1, ip %s and a machine-id of its own", fid, f1.IP)
		}
		// The fork's writes are its own.
		e.ssh("f1", "sh", "-c", "'echo f1-only > /root/marker && sync'")
		if got := strings.TrimSpace(e.ssh("w1", "cat", "/root/marker")); got != "forked-file" {
			t.Errorf("w1's marker after f1 wrote its own = %q", got)
		}
	})

	// Fewer guests for the rest (TCG guests cost CPU even idle); each
	// delete leaves nothing of its VM.
	t.Run("delete leaves nothing of the VM", func(t *testing.T) {
		e := e.with(t)
		for _, name := range []string{"f1", "w1", "cold1"} {
			vm, err := e.show(name)
			if err != nil {
				t.Fatal(err)
			}
			e.must("vm", "delete", "--force", name)
			if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
				t.Errorf("dir %s of deleted %s: %v, want gone", vm.Dir, name, err)
			}
		}
		if pids := e.hypervisorPIDs(); len(pids) != 1 {
			t.Errorf("hypervisors with only w2 left: %v, want one", pids)
		}
	})

	t.Run("a stale snapshot boots cold and says why", func(t *testing.T) {
		e := e.with(t)
		e.client().Shutdown(context.Background())
		e.killDaemonIfAlive()
		if err := os.WriteFile(filepath.Join(e.root, "config", "banger", "config.toml"),
			[]byte(strings.NewReplacer("memory_mib = 512", "memory_mib = 640", "warm_after_create = true", "warm_after_create = false").Replace(warmConfig)), 0o600); err != nil {
			t.Fatal(err)
		}
		e.startDaemon()
		imgs, err := e.client().ListImages(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, img := range imgs {
			if img.Name == "minimal" && (img.Warm != "stale" || !strings.Contains(img.WarmReason, "640 MiB")) {
				t.Errorf("image minimal with memory_mib 640: warm = %q (%s), want stale naming 640 MiB", img.Warm, img.WarmReason)
			}
		}
		vm, progress, took := e.createTimed("s1", "--image", "minimal")
		t.Logf("stale create in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(progress))
		if !strings.Contains(progress, "cold boot: the snapshot of image minimal is of a VM with 1 vCPUs and 512 MiB, this VM has 1 vCPUs and 640 MiB") {
			t.Errorf("stale create's progress lacks the reason it booted cold:\n%s", progress)
		}
		if contains(stageNames(vm), "restoring qemu") || vm.MemoryMiB != 640 {
			t.Errorf("stale create: stages %v memory %d, want a cold boot with 640 MiB", stageNames(vm), vm.MemoryMiB)
		}
		if up := e.uptime("s1"); up > took.Seconds()+5 {
			t.Errorf("uptime of s1 = %.2fs after a %v create, want a fresh boot", up, took)
		}
		// The VMs restored before the daemon restart were adopted.
		if got := strings.TrimSpace(e.ssh("w2", "hostname")); got != "w2" {
			t.Errorf("w2 after the daemon restart: hostname %q", got)
		}
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		e := e.with(t)
		for _, name := range []string{"w2", "s1"} {
			e.must("vm", "delete", "--force", name)
		}
		if pids := e.hypervisorPIDs(); len(pids) != 0 {
			t.Errorf("hypervisors left after deleting every VM: %v", pids)
		}
		for _, dir := range []string{filepath.Join(e.root, "data", "banger", "vms"), filepath.Join(e.root, "run", "banger", "vms"),
			filepath.Join(e.root, "run", "banger", "templates")} {
			ents, _ := os.ReadDir(dir)
			if len(ents) != 0 {
				var names []string
				for _, x := range ents {
					names = append(names, x.Name())
				}
				t.Errorf("%s after deleting every VM: %v, want empty", dir, names)
			}
		}
		var leftover []string
		filepath.WalkDir(filepath.Join(e.root, "data"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasPrefix(p, filepath.Join(e.root, "data", "banger", "vms")) {
				leftover = append(leftover, p)
			}
			return nil
		})
		if len(leftover) != 0 {
			t.Errorf("files of deleted VMs: %v", leftover)
		}
		// The image's snapshot stays for the next warm create, and only it.
		if ents, err := os.ReadDir(tmplDir); err != nil || len(ents) != 1 {
			t.Errorf("templates of minimal after the deletes = %v (%v), want one", ents, err)
		}
	})
}

// killDaemonIfAlive waits for a bangerd asked to shut down to exit, and
// kills it if it does not.
func (e *env) killDaemonIfAlive() {
	for i := 0; i < 100; i++ {
		if !pidAlive(e.pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.killDaemon()
}

func pidAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }
