package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/vmtest"
)

// TestLifecycle walks one VM through the whole lifecycle: create, ssh, bad
// input that changes nothing, a daemon SIGKILL and adoption, stop and start
// with /root intact, and a delete that leaves nothing behind.
func TestLifecycle(t *testing.T) {
	const consoleMax = 256 << 10
	e := newEnvWith(t, envOpts{config: defaultConfig + "console_log_max = \"256K\"\n"})
	vm := e.create("box1", "--image", "minimal")
	t.Logf("created box1 at %s, stages %+v", vm.IP, vm.Stages)

	if got := strings.TrimSpace(e.ssh("box1", "hostname")); got != "box1" {
		t.Fatalf("hostname in guest = %q, want box1", got)
	}
	e.ssh("box1", "sh", "-c", "'echo keep-me > /root/marker && sync'")
	if logs := e.must("vm", "logs", "box1"); !strings.Contains(logs, "banger-init:") {
		t.Errorf("vm logs box1 lacks the initramfs lines:\n%s", tail(logs, 20))
	}
	if st := e.must("daemon", "status", "--json"); !strings.Contains(st, `"running": 1`) {
		t.Errorf("daemon status = %s, want one running VM", st)
	}

	t.Run("bad input changes nothing", func(t *testing.T) {
		before := e.links()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"vm", "create", "--name", "box1", "--image", "minimal"}, "already exists"},
			{[]string{"vm", "create", "--name", "Bad_Name"}, "invalid VM name"},
			{[]string{"vm", "create", "--name", "box2", "--image", "nope"}, "nope"},
			{[]string{"vm", "create", "--name", "box2", "--image", "minimal", "--memory", "64"}, "too small"},
			{[]string{"vm", "create", "--name", "box2", "--image", "minimal", "--disk-size", "1M"}, "smaller than image"},
		} {
			_, stderr, err := e.banger(ctx, tc.args...)
			if err == nil || !strings.Contains(stderr, tc.want) {
				t.Errorf("banger %s: err = %v, stderr = %q, want failure mentioning %q", strings.Join(tc.args, " "), err, stderr, tc.want)
			}
		}
		vms, err := e.client().ListVMs(ctx)
		if err != nil || len(vms) != 1 || vms[0].Name != "box1" || vms[0].State != "running" {
			t.Fatalf("after bad creates: vms = %+v, err = %v; want only box1 running", vms, err)
		}
		if after := e.links(); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Errorf("links changed by refused creates: %v -> %v", before, after)
		}
		entries, _ := os.ReadDir(filepath.Join(e.root, "data", "banger", "vms"))
		if len(entries) != 1 {
			t.Errorf("VM data dirs after refused creates = %d, want 1", len(entries))
		}
		if got := strings.TrimSpace(e.ssh("box1", "cat", "/root/marker")); got != "keep-me" {
			t.Errorf("box1 after refused duplicate: marker = %q", got)
		}
	})

	t.Run("daemon SIGKILL keeps the VM", func(t *testing.T) {
		pids := e.hypervisorPIDs()
		e.killDaemon()
		e.startDaemon()
		got, err := e.show("box1")
		if err != nil || got.State != "running" {
			t.Fatalf("after restart: box1 = %+v, err = %v; want running", got, err)
		}
		if after := e.hypervisorPIDs(); len(after) != 1 || len(pids) != 1 || after[0] != pids[0] {
			t.Fatalf("hypervisor pids before %v, after %v: want the same single process", pids, after)
		}
		if out := strings.TrimSpace(e.ssh("box1", "cat", "/root/marker")); out != "keep-me" {
			t.Fatalf("ssh after daemon restart: marker = %q", out)
		}
	})

	t.Run("stop keeps disks and start brings /root back", func(t *testing.T) {
		e.must("vm", "stop", "box1")
		got, _ := e.show("box1")
		if got.State != "stopped" {
			t.Fatalf("after stop: state = %q", got.State)
		}
		if len(e.hypervisorPIDs()) != 0 {
			t.Fatalf("hypervisor still running after stop: %v", e.hypervisorPIDs())
		}
		if contains(e.links(), vm.TAP) {
			t.Errorf("tap %s still present after stop", vm.TAP)
		}
		for _, f := range diskFiles(vm) {
			if _, err := os.Stat(filepath.Join(vm.Dir, f)); err != nil {
				t.Errorf("disk %s after stop: %v", f, err)
			}
		}
		e.must("vm", "start", "box1")
		if out := strings.TrimSpace(e.ssh("box1", "cat", "/root/marker")); out != "keep-me" {
			t.Fatalf("after stop and start: marker = %q, want keep-me", out)
		}
	})

	t.Run("registered image boots", func(t *testing.T) {
		e := e.with(t)
		img := filepath.Join(e.root, "custom.ext4")
		if out, err := exec.Command("cp", "--sparse=always", filepath.Join(e.runtime, "rootfs-minimal.ext4"), img).CombinedOutput(); err != nil {
			t.Fatalf("copying image: %v: %s", err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, args := range [][]string{
			{"image", "register", "--name", "custom", "--rootfs", "/etc/hostname"},
			{"image", "register", "--name", "minimal", "--rootfs", img},
		} {
			if _, stderr, err := e.banger(ctx, args...); err == nil {
				t.Errorf("banger %s succeeded, want refusal (stderr %q)", strings.Join(args, " "), stderr)
			}
		}
		e.must("image", "register", "--name", "custom", "--rootfs", img)
		if out := e.must("image", "list"); !strings.Contains(out, "custom") {
			t.Fatalf("image list lacks custom:\n%s", out)
		}
		e.create("custom1", "--image", "custom")
		if got := strings.TrimSpace(e.ssh("custom1", "hostname")); got != "custom1" {
			t.Fatalf("hostname = %q", got)
		}
		e.must("vm", "delete", "--force", "custom1")
		e.must("image", "delete", "custom")
		if _, err := os.Stat(img); err != nil {
			t.Fatalf("image delete removed the user's file: %v", err)
		}

		// The same rootfs with a kernel of its own: copies of the bundle's,
		// so the guest still matches its modules, at paths of the image's.
		own := filepath.Join(e.root, "own-kernel")
		os.MkdirAll(own, 0o755)
		for _, f := range []string{"vmlinux", "initrd.img"} {
			if out, err := exec.Command("cp", filepath.Join(e.runtime, f), own).CombinedOutput(); err != nil {
				t.Fatalf("copying %s: %v: %s", f, err, out)
			}
		}
		if _, stderr, err := e.banger(ctx, "image", "register", "--name", "ownk", "--rootfs", img, "--kernel", filepath.Join(own, "initrd.img"), "--initrd", filepath.Join(own, "initrd.img")); err == nil || !strings.Contains(stderr, "not an ELF kernel") {
			t.Errorf("registering an initramfs as the kernel: %v, %q; want it refused", err, stderr)
		}
		e.must("image", "register", "--name", "ownk", "--rootfs", img, "--kernel", filepath.Join(own, "vmlinux"),
			"--initrd", filepath.Join(own, "initrd.img"), "--modules", filepath.Join(e.runtime, "modules"))
		release := strings.TrimSpace(e.ssh("box1", "uname", "-r"))
		if out := e.must("image", "list"); !strings.Contains(out, "own "+release) {
			t.Errorf("image list does not show ownk's own kernel %s:\n%s", release, out)
		}
		e.create("ownk1", "--image", "ownk")
		if got := strings.TrimSpace(e.ssh("ownk1", "uname", "-r")); got != release {
			t.Errorf("ownk1 runs kernel %q, want %q", got, release)
		}
		var booted bool
		for _, pid := range e.hypervisorPIDs() {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), filepath.Join(own, "vmlinux")) {
				booted = true
			}
		}
		if !booted {
			t.Errorf("no hypervisor boots the image's own kernel %s", filepath.Join(own, "vmlinux"))
		}
		e.must("vm", "delete", "--force", "ownk1")
		e.must("image", "delete", "ownk")
	})

	t.Run("a guest that never answers is kept in the error state", func(t *testing.T) {
		e := e.with(t)
		// An empty ext4: the kernel mounts it, finds no init and panics.
		img := filepath.Join(e.root, "empty.ext4")
		if out, err := vmtest.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
		e.must("image", "register", "--name", "broken", "--rootfs", img)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, stderr, err := e.banger(ctx, "vm", "create", "--name", "dud", "--image", "broken")
		if err == nil || !strings.Contains(stderr, "error state") {
			t.Fatalf("create of an unbootable image: %v, stderr %q; want a failure naming the error state", err, stderr)
		}
		vm, err := e.show("dud")
		if err != nil {
			t.Fatalf("the failed VM is gone: %v", err)
		}
		if vm.State != "error" || vm.PID != 0 {
			t.Fatalf("failed VM state = %s pid %d, want error, 0", vm.State, vm.PID)
		}
		for _, f := range append(diskFiles(vm), "console.log") {
			if _, err := os.Stat(filepath.Join(vm.Dir, f)); err != nil {
				t.Errorf("%s of the failed VM: %v", f, err)
			}
		}
		for _, l := range e.links() {
			if l == vm.TAP {
				t.Errorf("tap %s of the failed VM is still there", l)
			}
		}
		if logs := e.must("vm", "logs", "dud"); !strings.Contains(logs, "Kernel panic") && !strings.Contains(logs, "init") {
			t.Errorf("vm logs of the failed VM do not show why:\n%s", logs)
		}
		e.must("vm", "delete", "dud")
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Errorf("disks of the deleted VM: %v", err)
		}
		e.must("image", "delete", "broken")
	})

	t.Run("built image boots", func(t *testing.T) {
		e := e.with(t)
		out := e.must("image", "build", "--name", "built", "--kind", "minimal")
		if !strings.Contains(out, "image built built") {
			t.Fatalf("image build output: %q", out)
		}
		e.create("built1", "--image", "built")
		if got := strings.TrimSpace(e.ssh("built1", "hostname")); got != "built1" {
			t.Fatalf("hostname = %q", got)
		}
		e.must("vm", "delete", "--force", "built1")
		dir := filepath.Join(e.root, "data", "banger", "images", "built")
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("built image dir: %v", err)
		}
		e.must("image", "delete", "built")
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("built image files left after delete (err %v)", err)
		}
	})

	t.Run("a guest flooding its console stays within the cap", func(t *testing.T) {
		e := e.with(t)
		got, _ := e.show("box1")
		log := got.ConsoleLog
		// A terminal escape (set the window title) and 2 MB of lines, eight
		// times the cap, written to the serial console as fast as it goes.
		done := make(chan string, 1)
		go func() {
			done <- e.ssh("box1", "sh", "-c", `'printf "\033]0;pwned\007mark\n" > /dev/ttyS0; head -c 2000000 /dev/zero | tr "\0" x | fold -w 99 > /dev/ttyS0; echo flooded'`)
		}()
		var biggest int64
		for flooding := true; flooding; {
			select {
			case out := <-done:
				if !strings.Contains(out, "flooded") {
					t.Fatalf("flood script: %q", out)
				}
				flooding = false
			case <-time.After(100 * time.Millisecond):
			}
			if fi, err := os.Stat(log); err == nil && fi.Size() > biggest {
				biggest = fi.Size()
			}
		}
		time.Sleep(time.Second)
		for _, p := range []string{log, log + ".1"} {
			if fi, err := os.Stat(p); err != nil || fi.Size() > consoleMax {
				t.Errorf("after the flood %s: %v, %v; want at most %d bytes", p, fi, err, consoleMax)
			}
		}
		// Between checks the guest gets a quarter second (~110 KiB) past the cap.
		if biggest > consoleMax+512<<10 {
			t.Errorf("console log reached %d bytes during the flood, want at most the cap %d plus 512 KiB", biggest, consoleMax)
		}
		t.Logf("console log peaked at %d bytes under a %d-byte cap", biggest, consoleMax)
		logs := e.must("vm", "logs", "box1")
		if strings.ContainsAny(logs, "\x1b\x07\r") || !strings.Contains(logs, strings.Repeat("x", 99)) {
			t.Errorf("vm logs after the flood passes control characters or lacks the flood: %q", tail(logs, 3))
		}
	})

	t.Run("a killed hypervisor is an error with its signal", func(t *testing.T) {
		e := e.with(t)
		pids := e.hypervisorPIDs()
		if len(pids) != 1 {
			t.Fatalf("hypervisor pids = %v, want one", pids)
		}
		syscall.Kill(pids[0], syscall.SIGKILL)
		var got rpc.VM
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, _ = e.show("box1"); got.State != "running" {
				break
			}
		}
		if got.State != "error" || !strings.Contains(got.Error, "signal 9 (SIGKILL)") {
			t.Fatalf("after SIGKILL of its qemu: state %q, error %q; want error naming the signal", got.State, got.Error)
		}
		e.must("vm", "start", "box1")
		if out := strings.TrimSpace(e.ssh("box1", "cat", "/root/marker")); out != "keep-me" {
			t.Fatalf("after restarting a crashed VM: marker = %q", out)
		}
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		got, _ := e.show("box1")
		e.must("vm", "delete", "--force", "box1")
		if contains(e.links(), got.TAP) {
			t.Errorf("tap %s left after delete", got.TAP)
		}
		if pids := e.hypervisorPIDs(); len(pids) != 0 {
			t.Errorf("hypervisor processes left after delete: %v", pids)
		}
		for _, dir := range []string{got.Dir, filepath.Join(e.root, "run", "banger", "vms", got.ID)} {
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s left after delete (err %v)", dir, err)
			}
		}
		if _, err := e.show("box1"); !rpc.IsCode(err, rpc.CodeNotFound) {
			t.Errorf("show after delete: err = %v, want not_found", err)
		}
		if n := countRows(t, filepath.Join(e.root, "state", "banger", "banger.db"), got.ID); n != 0 {
			t.Errorf("database rows mentioning %s after delete = %d, want 0", got.ID, n)
		}
	})
}

// TestConcurrentCreate creates two VMs at once; both must become ready.
func TestConcurrentCreate(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	vms := make([]rpc.VM, 2)
	for i, name := range []string{"par1", "par2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i] = e.create(name, "--image", "minimal")
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if vms[0].IP == vms[1].IP {
		t.Fatalf("both VMs got %s", vms[0].IP)
	}
	for _, name := range []string{"par1", "par2"} {
		if got := strings.TrimSpace(e.ssh(name, "hostname")); got != name {
			t.Errorf("hostname of %s = %q", name, got)
		}
	}

	// --no-wait returns once the hypervisor runs; the daemon finishes the
	// readiness checks on its own.
	out := e.must("vm", "create", "--name", "later", "--image", "minimal", "--no-wait", "--json")
	var vm rpc.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil || vm.State != "starting" {
		t.Fatalf("create --no-wait = %q (%v), want state starting", out, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for vm.State != "running" {
		if time.Now().After(deadline) {
			t.Fatalf("VM created with --no-wait never became running: %+v", vm)
		}
		time.Sleep(250 * time.Millisecond)
		vm, _ = e.show("later")
	}
	if got := strings.TrimSpace(e.ssh("later", "hostname")); got != "later" {
		t.Errorf("hostname of later = %q", got)
	}

	// A delete does not wait for a VM's boot to finish.
	e.must("vm", "create", "--name", "gone", "--image", "minimal", "--no-wait")
	start := time.Now()
	e.must("vm", "delete", "--force", "gone")
	if d := time.Since(start); d > 90*time.Second { // far below the 300 s readiness timeout it once queued behind
		t.Errorf("delete of a booting VM took %v", d)
	}
	if _, err := e.show("gone"); !rpc.IsCode(err, rpc.CodeNotFound) {
		t.Errorf("gone after delete: %v", err)
	}

	// bangerd stopping mid-boot leaves the VM booting; the next bangerd
	// adopts it and finishes its readiness checks.
	e.must("vm", "create", "--name", "survivor", "--image", "minimal", "--no-wait")
	e.client().Shutdown(context.Background())
	e.startDaemon()
	for deadline := time.Now().Add(3 * time.Minute); ; {
		vm, err := e.show("survivor")
		if err == nil && vm.State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("survivor after a daemon restart mid-boot: %+v, %v; want running", vm, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if got := strings.TrimSpace(e.ssh("survivor", "hostname")); got != "survivor" {
		t.Errorf("hostname of survivor = %q", got)
	}

	e.must("vm", "delete", "--force", "par1", "par2", "later", "survivor")
	if pids := e.hypervisorPIDs(); len(pids) != 0 {
		t.Errorf("hypervisors left after fan-out delete: %v", pids)
	}
}

// TestDefaultImage boots the default docker image through the daemon, runs
// a container and reaches its opencode server from the host by name
// (dock.vm:4096) and through a port published on the host's loopback
// (127.0.0.1:14096), though both start after readiness, and checks that
// they and the rest of boot did, with no failed unit.
func TestDefaultImage(t *testing.T) {
	e := newEnv(t)
	vm := e.create("dock", "--publish", "14096:4096")
	t.Logf("docker image ready, stages %+v", vm.Stages)
	// A file put in /tmp as soon as the VM is ready stays there: the boot's
	// emptying of /tmp is over by then (checked below, once
	// systemd-tmpfiles-setup, which runs after readiness, is done).
	e.ssh("dock", "sh", "-c", "'echo early > /tmp/banger-e2e-early'")

	// dockerd starts after readiness: wait for it (bounded), then run a
	// container. The image's static agent binary, imported as a one-file
	// image, runs in a container with no registry.
	ready := time.Now()
	if out := strings.TrimSpace(e.ssh("dock", "sh", "-c", "'timeout 300 sh -c \"until docker info >/dev/null 2>&1; do sleep 1; done\"; docker info --format {{.ServerVersion}}'")); out == "" || strings.ContainsAny(out, " \n") {
		t.Errorf("docker info after readiness = %q, want the server version", out)
	}
	t.Logf("docker answered %v after readiness", time.Since(ready).Round(time.Millisecond))
	out := e.ssh("dock", "sh", "-c", "'tar -C /usr/local/bin -c banger-vsock-agent | docker import - banger-e2e:agent >/dev/null && docker run --rm --network none banger-e2e:agent /banger-vsock-agent help'")
	if !strings.Contains(out, "usage: banger-vsock-agent") {
		t.Errorf("docker run of an imported image said %q, want the agent's usage", out)
	}

	out = e.ssh("dock", "sh", "-c", "'docker --version && tmux -V && git --version && curl --version | head -n 1 && mise --version && opencode --version'")
	for _, want := range []string{"Docker version", "tmux", "git version", "curl", "2026.", "1."} {
		if !strings.Contains(out, want) {
			t.Errorf("default image tools: output %q lacks %q", out, want)
		}
	}

	// The host resolves dock.vm through bangerd and reaches port 4096.
	r := query(t, e, "dock.vm", mdns.TypeA)
	if len(r.Answer) != 1 {
		t.Fatalf("dock.vm A = %v", r)
	}
	addr := net.JoinHostPort(r.Answer[0].(*mdns.A).A.String(), "4096")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return e.ns.Dial(ctx, network, a) },
	}}
	// Each VM's opencode server has its own password (basic auth, user
	// opencode), which 'vm show' gives and VM lists do not.
	var shown rpc.VM
	if err := json.Unmarshal([]byte(e.must("vm", "show", "--json", "dock")), &shown); err != nil || shown.OpencodePassword == "" {
		t.Fatalf("vm show --json gives no opencode password: %+v, %v", shown, err)
	}
	if strings.Contains(e.must("vm", "list", "--json"), shown.OpencodePassword) {
		t.Errorf("vm list --json shows the opencode password")
	}
	get := func(auth bool) (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/global/health", nil)
		if auth {
			req.SetBasicAuth("opencode", shown.OpencodePassword)
		}
		return client.Do(req)
	}
	start := time.Now()
	for {
		resp, err := get(true)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(body), "healthy") {
				t.Logf("opencode on dock.vm:4096 answered %s, %v after ssh readiness", strings.TrimSpace(string(body)), time.Since(start).Round(time.Second))
				break
			}
		}
		if time.Since(start) > 7*time.Minute {
			t.Fatalf("opencode on %s never answered: %v", addr, err)
		}
		time.Sleep(2 * time.Second)
	}

	resp, err := get(false)
	if err != nil {
		t.Errorf("opencode without the password: %v; want 401", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("opencode without the password answered %s, want 401", resp.Status)
		}
	}

	// Boot finishes with every unit up, and what is not on the readiness
	// path started after the agent.
	if out := e.ssh("dock", "sh", "-c", "'timeout 300 systemctl is-system-running --wait; systemctl --failed --no-legend --plain'"); strings.TrimSpace(out) != "running" {
		t.Errorf("systemctl is-system-running --wait and the failed units = %q, want running and none", out)
	}
	monotonic := func(unit, prop string) int64 {
		out := strings.TrimSpace(e.ssh("dock", "systemctl", "show", "--value", "-p", prop, unit))
		n, err := strconv.ParseInt(out, 10, 64)
		if err != nil {
			t.Fatalf("systemctl show -p %s %s = %q: %v", prop, unit, out, err)
		}
		return n
	}
	agentUp := monotonic("banger-agent.service", "ActiveEnterTimestampMonotonic")
	for _, u := range []string{"docker.service", "containerd.service", "opencode-server.service", "banger-tmux.service",
		"systemd-udev-trigger.service", "apparmor.service", "systemd-tmpfiles-setup.service", "serial-getty@ttyS0.service"} {
		if began := monotonic(u, "InactiveExitTimestampMonotonic"); began < agentUp {
			t.Errorf("%s began starting at %d µs, before the agent was up at %d µs", u, began, agentUp)
		}
	}
	if out := strings.TrimSpace(e.ssh("dock", "sh", "-c", "'timeout 120 sh -c \"until systemctl is-active -q systemd-tmpfiles-setup.service; do sleep 1; done\"; cat /tmp/banger-e2e-early'")); out != "early" {
		t.Errorf("a file written to /tmp at readiness reads %q after systemd-tmpfiles-setup ran, want it kept", out)
	}

	// The same server through the published port, with and without its
	// password, and again after bangerd restarts.
	t.Run("published on host loopback", func(t *testing.T) {
		e := e.with(t)
		e.publishedOpencode(shown.OpencodePassword, "after create")
		e.client().Shutdown(context.Background())
		e.startDaemon()
		e.waitAnswer("http://127.0.0.1:14096/global/health", 30*time.Second)
		e.publishedOpencode(shown.OpencodePassword, "after a bangerd restart")
	})

	// tmux sessions come back after a stop and start, with their windows
	// and directories (banger-tmux.service saves at shutdown, restores at
	// boot).
	e.ssh("dock", "sh", "-c", "'mkdir -p /root/proj /var/tmp/logs && tmux new-session -d -s work -n edit -c /root/proj && tmux new-window -t work -n logs -c /var/tmp/logs && tmux split-window -t work:logs -c /root'")
	e.must("vm", "stop", "dock")
	e.must("vm", "start", "dock")
	// banger-tmux.service restores after readiness (the agent and sshd
	// boot first), so the sessions may come a little after ssh answers.
	want := "work:edit:/root/proj\nwork:logs:/var/tmp/logs\nwork:logs:/root"
	var got string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, _, _ := e.banger(context.Background(), "vm", "ssh", "dock", "--", "tmux", "list-panes", "-a", "-F", "'#{session_name}:#{window_name}:#{pane_current_path}'")
		if got = strings.TrimSpace(out); got == want || time.Now().After(deadline) {
			break
		}
	}
	if got != want {
		t.Errorf("tmux panes after stop and start:\n%s\nwant:\n%s", got, want)
	}
}

// TestMissingBundle checks that a create without a runtime bundle fails with
// a clear error and records nothing.
func TestMissingBundle(t *testing.T) {
	e := newEnv(t)
	e.runtime = filepath.Join(e.root, "no-bundle")
	e.client().Shutdown(context.Background())
	e.startDaemon()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, stderr, err := e.banger(ctx, "vm", "create", "--name", "nobundle")
	if err == nil || !strings.Contains(stderr, "runtime-bundle") {
		t.Fatalf("create without bundle: err = %v, stderr = %q; want an error telling to run make runtime-bundle", err, stderr)
	}
	if vms, _ := e.client().ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("VMs after refused create: %+v", vms)
	}
}

// TestDoctorWithoutQEMU runs the real banger doctor with a PATH that has
// every host tool but qemu: it must name the package and exit non-zero.
func TestDoctorWithoutQEMU(t *testing.T) {
	bin := os.Getenv("BANGER_BIN")
	vmtest.RequireHost(t, "banger doctor's real binary", vmtest.Var("BANGER_BIN", "make test sets it"))
	dir := t.TempDir()
	for _, tool := range []string{"ip", "e2fsck", "resize2fs", "mkfs.ext4", "ssh", "nft", "debootstrap", "apt-get", "dpkg", "cp", "sudo", "sh"} {
		if p, err := exec.LookPath(tool); err == nil {
			os.Symlink(p, filepath.Join(dir, tool))
		}
	}
	cmd := exec.Command(filepath.Join(bin, "banger"), "doctor")
	cmd.Env = append(os.Environ(), "PATH="+dir, "XDG_CONFIG_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("banger doctor without qemu: err = %v, want exit status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "apt-get install qemu-system-x86") || !strings.Contains(string(out), "FAIL") {
		t.Fatalf("banger doctor without qemu does not name the package:\n%s", out)
	}
}
