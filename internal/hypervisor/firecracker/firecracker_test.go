package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/firecracker/fctest"
	"github.com/banger/banger/internal/hypervisor/proc"
)

// fakeBackend returns a Backend whose firecracker is this test binary
// running as fctest's fake.
func fakeBackend(t *testing.T) Backend {
	t.Helper()
	bin, err := fctest.InstallFake(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return Backend{Binary: bin, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// testSpec returns a valid spec whose files exist in a fresh directory.
func testSpec(t *testing.T) hypervisor.Spec {
	t.Helper()
	dir := t.TempDir()
	return hypervisor.Spec{
		ID:        "vm-" + strconv.Itoa(os.Getpid()),
		Dir:       dir,
		Kernel:    touch(t, dir, "vmlinux"),
		Initrd:    touch(t, dir, "initrd.img"),
		Cmdline:   "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
		VCPUs:     2,
		MemoryMiB: 512,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: touch(t, dir, "root.ext4"), Root: true},
			{ID: "work", Path: touch(t, dir, "work.ext4")},
		},
		NICs:       []hypervisor.NIC{{ID: "eth0", TAP: "tap-test0", MAC: "06:00:0a:00:00:02"}},
		ConsoleLog: filepath.Join(dir, "console.log"),
		AgentCID:   3,
	}
}

// startFake starts spec on the fake and kills it when the test ends.
func startFake(t *testing.T, b Backend, spec hypervisor.Spec) hypervisor.Instance {
	t.Helper()
	inst, err := b.Start(ctxT(t), spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { inst.Kill() })
	return inst
}

// health asks the agent behind inst for its health over vsock.
func health(t *testing.T, inst hypervisor.Instance) map[string]any {
	t.Helper()
	conn, err := inst.DialAgent(ctxT(t))
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(conn, `{"op":"health"}`)
	var resp map[string]any
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		t.Fatalf("reading health: %v", err)
	}
	if resp["ok"] != true {
		t.Fatalf("health = %v, want ok", resp)
	}
	return resp
}

// processesServing lists the pids whose command line names sock.
func processesServing(sock string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(data), "\x00"+sock+"\x00") && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func assertGone(t *testing.T, spec hypervisor.Spec) {
	t.Helper()
	p := pathsIn(spec.Dir)
	if pids := processesServing(p.api); len(pids) > 0 {
		t.Errorf("processes still serving %s: %v", p.api, pids)
	}
	for _, f := range []string{p.api, p.vsock, p.pid} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after the VM ended (stat: %v)", f, err)
		}
	}
}

func TestStartHealthShutdown(t *testing.T) {
	b := fakeBackend(t)
	spec := testSpec(t)
	inst := startFake(t, b, spec)

	if inst.Exited() {
		t.Fatal("Exited() = true right after Start")
	}
	if err := syscall.Kill(inst.PID(), 0); err != nil {
		t.Fatalf("pid %d: %v", inst.PID(), err)
	}
	pidFile, _ := os.ReadFile(filepath.Join(spec.Dir, PIDFileName))
	if got := strings.TrimSpace(string(pidFile)); got != strconv.Itoa(inst.PID()) {
		t.Errorf("pid file = %q, want %d", got, inst.PID())
	}
	if fi, err := os.Stat(filepath.Join(spec.Dir, LogFileName)); err != nil || fi.Size() == 0 {
		t.Errorf("firecracker.log = %v, %v; want a non-empty file", fi, err)
	}

	calls, err := fctest.ReadJournal(spec.Dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"PUT /logger", "PUT /machine-config", "PUT /boot-source",
		"PUT /drives/root", "PUT /drives/work", "PUT /network-interfaces/eth0",
		"PUT /vsock", "PUT /entropy", "PUT /actions",
	}
	if got := fctest.Succeeded(calls); !reflect.DeepEqual(got, want) {
		t.Errorf("configuration calls = %q, want %q", got, want)
	}
	for _, c := range calls {
		if c.Status >= 300 {
			t.Errorf("call %s failed: %d %s", c, c.Status, c.Fault)
		}
		if c.String() == "PUT /vsock" {
			wantBody := fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(spec.Dir, VsockSocketName))
			if c.Body != wantBody {
				t.Errorf("PUT /vsock body = %s, want %s", c.Body, wantBody)
			}
		}
	}

	h := health(t, inst)
	if h["hostname"] != spec.ID {
		t.Errorf("health hostname = %v, want %s", h["hostname"], spec.ID)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !inst.Exited() {
		t.Error("Exited() = false after Shutdown")
	}
	if err := inst.Wait(ctx); err != nil {
		t.Errorf("Wait after Shutdown = %v, want nil", err)
	}
	if err := syscall.Kill(inst.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Shutdown = %v, want ESRCH", inst.PID(), err)
	}
	assertGone(t, spec)
	console, _ := os.ReadFile(spec.ConsoleLog)
	for _, w := range []string{"fctest: booting", "Ctrl-Alt-Del"} {
		if !strings.Contains(string(console), w) {
			t.Errorf("console log lacks %q:\n%s", w, console)
		}
	}
	if _, err := inst.DialAgent(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("DialAgent after Shutdown = %v, want ErrNotRunning", err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown = %v, want nil", err)
	}
}

func TestAgentShutdownEndsProcess(t *testing.T) {
	inst := startFake(t, fakeBackend(t), testSpec(t))
	conn, err := inst.DialAgent(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintln(conn, `{"op":"shutdown"}`)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("shutdown answer = %q, %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := inst.Wait(ctx); err != nil {
		t.Fatalf("Wait after agent shutdown = %v", err)
	}
}

func TestAttachAfterDaemonRestart(t *testing.T) {
	b := fakeBackend(t)
	spec := testSpec(t)
	first := startFake(t, b, spec)

	// A new daemon: a new Backend value, the same directory.
	b2 := Backend{Binary: b.Binary, Log: b.Log}
	inst, err := b2.Attach(ctxT(t), spec)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if inst.PID() != first.PID() {
		t.Errorf("attached PID() = %d, want %d", inst.PID(), first.PID())
	}
	health(t, inst)
	if err := inst.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if !inst.Exited() {
		t.Error("Exited() = false after Kill")
	}
	if err := first.Wait(ctxT(t)); err != nil {
		t.Errorf("first instance Wait = %v", err)
	}
	assertGone(t, spec)
	if _, err := b2.Attach(ctxT(t), spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach after Kill = %v, want ErrNotRunning", err)
	}
}

func TestAttachWaitsForNonChildExit(t *testing.T) {
	b := fakeBackend(t)
	spec := testSpec(t)
	first := startFake(t, b, spec)
	inst, err := Backend{Binary: b.Binary, Log: b.Log}.Attach(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	// Shut down through the first instance; the attached one must notice.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Wait(ctx); err != nil {
		t.Fatalf("attached Wait = %v", err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown of an exited attached instance = %v, want nil", err)
	}
}

func TestAttachNotRunning(t *testing.T) {
	b := fakeBackend(t)
	tests := []struct {
		name    string
		pidFile string // "" means none
	}{
		{"no pid file", ""},
		{"corrupt pid file", "banana\n"},
		{"dead pid", "2147483646\n"},
		{"pid of something else", strconv.Itoa(os.Getpid()) + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(t)
			if tt.pidFile != "" {
				os.WriteFile(filepath.Join(spec.Dir, PIDFileName), []byte(tt.pidFile), 0o600)
			}
			_, err := b.Attach(ctxT(t), spec)
			if !errors.Is(err, hypervisor.ErrNotRunning) {
				t.Errorf("Attach with pid file %q = %v, want ErrNotRunning", tt.pidFile, err)
			}
		})
	}
}

func TestStartFailureCleansUp(t *testing.T) {
	b := fakeBackend(t)
	spec := testSpec(t)
	spec.Disks[1].Path = filepath.Join(spec.Dir, "missing.ext4")
	_, err := b.Start(ctxT(t), spec)
	if err == nil {
		t.Fatal("Start with a missing disk succeeded")
	}
	for _, w := range []string{"firecracker: configuring drives for " + spec.ID, "PUT /drives/work: firecracker says: path_on_host"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Start error = %q, want it to contain %q", err, w)
		}
	}
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Errorf("Start error does not wrap an *APIError: %v", err)
	}
	assertGone(t, spec)
}

// TestStartRefusesShares checks that a spec with shared folders is refused
// before a firecracker process exists: firecracker has no virtio-fs.
func TestStartRefusesShares(t *testing.T) {
	spec := testSpec(t)
	spec.Shares = []hypervisor.Share{{Tag: "banger0", Socket: filepath.Join(spec.Dir, "fs0.sock")}}
	_, err := fakeBackend(t).Start(ctxT(t), spec)
	if err == nil || !strings.Contains(err.Error(), "host folders need qemu") {
		t.Errorf("Start with a share = %v, want a refusal saying host folders need qemu", err)
	}
	assertGone(t, spec)
}

func TestStartWhenFirecrackerDies(t *testing.T) {
	spec := testSpec(t)
	b := Backend{Binary: "/bin/sleep", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_, err := b.Start(ctxT(t), spec)
	if err == nil || !strings.Contains(err.Error(), "exited before serving") || !strings.Contains(err.Error(), "sleep:") {
		t.Errorf("Start with a binary that exits = %v, want an error quoting its console output", err)
	}
	assertGone(t, spec)
}

func TestStartTimesOutAndKills(t *testing.T) {
	spec := testSpec(t)
	script := filepath.Join(t.TempDir(), "firecracker")
	os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755)
	b := Backend{Binary: script, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := b.Start(ctx, spec)
	if err == nil || !strings.Contains(err.Error(), "waiting for the api socket") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start with a silent binary = %v, want a deadline error at the socket step", err)
	}
	assertGone(t, spec)
}

func TestStartRefusesLiveSocket(t *testing.T) {
	spec := testSpec(t)
	srv := fctest.NewServer("other")
	if err := srv.Listen(filepath.Join(spec.Dir, APISocketName)); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, err := fakeBackend(t).Start(ctxT(t), spec)
	if err == nil || !strings.Contains(err.Error(), "is in use by a running process") {
		t.Errorf("Start over a live socket = %v, want a refusal", err)
	}
	if _, err := NewClient(filepath.Join(spec.Dir, APISocketName)).Instance(ctxT(t)); err != nil {
		t.Errorf("the live server stopped answering: %v", err)
	}
}

func TestStartReplacesStaleSockets(t *testing.T) {
	spec := testSpec(t)
	for _, name := range []string{APISocketName, VsockSocketName} {
		ln, err := net.Listen("unix", filepath.Join(spec.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
	}
	inst := startFake(t, fakeBackend(t), spec)
	health(t, inst)
}

func TestKillEscalatesToSIGKILL(t *testing.T) {
	t.Setenv(fctest.IgnoreTermEnv, "1")
	spec := testSpec(t)
	inst := startFake(t, fakeBackend(t), spec)
	t0 := time.Now()
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < termGrace {
		t.Errorf("Kill took %v, want at least the SIGTERM grace %v", d, termGrace)
	}
	assertGone(t, spec)
}

func TestStartRejectsBadSpecs(t *testing.T) {
	b := fakeBackend(t)
	tests := []struct {
		name   string
		modify func(*hypervisor.Spec)
		want   string
	}{
		{"bad id", func(s *hypervisor.Spec) { s.ID = "vm_1" }, "letters, digits or hyphens"},
		{"relative dir", func(s *hypervisor.Spec) { s.Dir = "vms/1" }, "not absolute"},
		{"no kernel", func(s *hypervisor.Spec) { s.Kernel = "" }, "no kernel"},
		{"0 vcpus", func(s *hypervisor.Spec) { s.VCPUs = 0 }, "0 vCPUs"},
		{"no memory", func(s *hypervisor.Spec) { s.MemoryMiB = 0 }, "0 MiB"},
		{"cid 2", func(s *hypervisor.Spec) { s.AgentCID = 2 }, "agent CID 2"},
		{"root not first", func(s *hypervisor.Spec) { s.Disks[0].Root, s.Disks[1].Root = false, true }, "must be the first disk"},
		{"duplicate disk", func(s *hypervisor.Spec) { s.Disks[1].ID = "root" }, "used twice"},
		{"nic without tap", func(s *hypervisor.Spec) { s.NICs[0].TAP = "" }, "needs an id and a tap"},
		{"qcow2 disk", func(s *hypervisor.Spec) { s.Disks[1].Format = hypervisor.DiskQcow2 }, "is qcow2: firecracker takes raw files only"},
		{"memory file", func(s *hypervisor.Spec) { s.MemoryFile = "/dev/shm/ram" }, "is a qemu feature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(t)
			tt.modify(&spec)
			_, err := b.Start(ctxT(t), spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestAvailable(t *testing.T) {
	plain := touch(t, t.TempDir(), "firecracker")
	tests := []struct {
		binary string
		want   string
	}{
		{"/nonexistent/firecracker", "firecracker binary /nonexistent/firecracker"},
		{plain, "is not an executable file"},
	}
	for _, tt := range tests {
		err := Backend{Binary: tt.binary}.Available()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Backend{Binary: %q}.Available() = %v, want an error containing %q", tt.binary, err, tt.want)
		}
	}
	if hypervisor.KVMUsable() != nil {
		err := Backend{Binary: plain}.Available()
		if err == nil || !strings.Contains(err.Error(), "; ") {
			t.Errorf("Available() on a host without KVM or binary = %v, want both reasons", err)
		}
	}
	if n := (Backend{}).Name(); n != "firecracker" {
		t.Errorf("Name() = %q, want firecracker", n)
	}
}

func TestVsockHandshake(t *testing.T) {
	tests := []struct {
		answer  string
		wantErr string // "" means success
	}{
		{"OK 1073741824\nhello", ""},
		{"", "closed before OK"},
		{"NOK\n", "unexpected CONNECT answer"},
		{"OK port\n", "unexpected CONNECT answer"},
	}
	for _, tt := range tests {
		host, guest := net.Pipe()
		go func() {
			br := bufio.NewReader(guest)
			line, _ := br.ReadString('\n')
			if line != "CONNECT 1024\n" {
				guest.Write([]byte("wrong request " + line))
			}
			guest.Write([]byte(tt.answer))
			guest.Close()
		}()
		err := vsockHandshake(host, 1024)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("vsockHandshake after %q = %v, want success", tt.answer, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("vsockHandshake after %q = %v, want %q", tt.answer, err, tt.wantErr)
		case err == nil:
			rest, _ := io.ReadAll(host)
			if string(rest) != "hello" {
				t.Errorf("stream after handshake = %q, want %q", rest, "hello")
			}
		}
		host.Close()
	}
}

func TestDialAgentBeforeBoot(t *testing.T) {
	f := newFixture(t)
	vs := filepath.Join(f.dir, VsockSocketName)
	if err := f.c.PutVsock(ctxT(t), Vsock{GuestCID: 3, UDSPath: vs}); err != nil {
		t.Fatal(err)
	}
	_, err := dialVsock(ctxT(t), vs, agent.Port)
	if err == nil || !strings.Contains(err.Error(), "closed before OK") {
		t.Errorf("dialVsock before boot = %v, want the connection closed", err)
	}
}

// alive reports whether pid runs (not a zombie).
func alive(pid int) bool {
	p, err := proc.Open(pid)
	if err != nil {
		return false
	}
	defer p.Close()
	return !p.Exited()
}
