package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
)

// isolate points banger's paths and helpers at the test's own directories,
// so no test can reach or start a real bangerd.
func isolate(t *testing.T) string {
	t.Helper()
	dir := rpctest.TempDir(t)
	t.Setenv("XDG_STATE_HOME", filepath.Join(dir, "state"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(dir, "run"))
	t.Setenv("BANGER_SOCKET", "")
	t.Setenv("BANGER_DAEMON", filepath.Join(dir, "no-bangerd"))
	t.Setenv("BANGER_SSH", "")
	t.Setenv("NO_COLOR", "1")
	return dir
}

// TestMain lets the test binary play bangerd when banger starts it as one
// (BANGER_DAEMON pointing at it, see TestAutoStart).
func TestMain(m *testing.M) {
	if os.Getenv("BANGER_FAKE_DAEMON") == "1" {
		os.Exit(fakeDaemonMain())
	}
	os.Exit(m.Run())
}

// fakeDaemonMain serves a fake bangerd on the --socket it is given until a
// client asks it to shut down, and returns the exit code.
func fakeDaemonMain() int {
	socket := ""
	for i, a := range os.Args {
		if a == "--socket" && i+1 < len(os.Args) {
			socket = os.Args[i+1]
		}
	}
	if socket == "" {
		fmt.Fprintln(os.Stderr, "fake bangerd: --socket missing")
		return 2
	}
	fmt.Println("fake bangerd listening on", socket)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rpctest.New().ListenAndServe(ctx, socket); err != nil {
		fmt.Fprintln(os.Stderr, "fake bangerd:", err)
		return 1
	}
	return 0
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	return runIn(t, strings.NewReader(""), args...)
}

func runIn(t *testing.T, stdin *strings.Reader, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := Run(ctx, args, stdin, &stdout, &stderr)
	t.Logf("banger %s = %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return result{code, stdout.String(), stderr.String()}
}

func TestCreateProgressPlain(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	r := run(t, "--socket", f.Socket, "vm", "create", "--name", "testbox", "--memory", "2G", "--nat")
	if r.code != 0 {
		t.Fatalf("exit code = %d, want 0", r.code)
	}
	for _, want := range []string{"stage prepare...\n", "stage prepare done 0.4s\n", "stage boot...\n", "  kernel up\n", "stage boot done 3.1s\n"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if !strings.HasPrefix(r.stdout, "testbox is ready (ip 172.30.0.2) in ") || !strings.HasSuffix(r.stdout, "s\nssh: banger vm ssh testbox\n") {
		t.Errorf("stdout = %q, want the ready line and the ssh hint", r.stdout)
	}
	if strings.Contains(r.stderr, "starting bangerd") {
		t.Errorf("stderr = %q, but bangerd was already running", r.stderr)
	}
	want := rpc.CreateRequest{Name: "testbox", MemoryMiB: 2048, NAT: true}
	if creates := f.Creates(); len(creates) != 1 || !reflect.DeepEqual(creates[0], want) {
		t.Errorf("create requests = %+v, want [%+v]", creates, want)
	}
}

func TestCreatePositionalNameJSON(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	r := run(t, "--socket", f.Socket, "vm", "create", "web", "--json")
	if r.code != 0 {
		t.Fatalf("exit code = %d, want 0", r.code)
	}
	var vm rpc.VM
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil {
		t.Fatalf("stdout is not a VM as JSON: %v", err)
	}
	if vm.Name != "web" || vm.State != "running" || vm.IP != "172.30.0.2" {
		t.Errorf("vm = %+v, want web running at 172.30.0.2", vm)
	}
	if !strings.Contains(r.stderr, "web is ready") {
		t.Errorf("stderr = %q, want the ready line there when stdout is JSON", r.stderr)
	}
}

func TestCreateFails(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.FailBoot("bad", "guest did not answer within 300s")
	r := run(t, "--socket", f.Socket, "vm", "create", "bad")
	if r.code != 1 {
		t.Errorf("exit code = %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, "stage boot failed after") {
		t.Errorf("stderr lacks the failed stage")
	}
	if !strings.Contains(r.stderr, "error: creating vm bad: guest did not answer within 300s") || !strings.Contains(r.stderr, "banger vm logs bad") {
		t.Errorf("stderr lacks the error and the logs hint")
	}
	if n := strings.Count(r.stderr, "error:"); n != 1 {
		t.Errorf("stderr has %d error lines, want 1", n)
	}
}

func TestCreateInterrupted(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Hold("slow")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	var stdout, stderr bytes.Buffer
	code := Run(ctx, []string{"--socket", f.Socket, "vm", "create", "slow"}, nil, &stdout, &stderr)
	if code != exitInterrupted {
		t.Errorf("exit code = %d, want %d", code, exitInterrupted)
	}
	for _, want := range []string{"stage boot...", "slow keeps booting in the background", "banger vm show slow", "banger vm delete --force slow"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
	if strings.Contains(stderr.String(), "error:") {
		t.Errorf("stderr %q has an error line, want only the interruption note", stderr.String())
	}
}

func TestStopFanOut(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "a", State: "running"})
	f.Add(rpc.VM{Name: "b", State: "running"})
	f.DelayStop("a", 200*time.Millisecond) // a finishes last but is reported first

	r := run(t, "--socket", f.Socket, "vm", "stop", "a", "missing", "b")
	if r.code != 1 {
		t.Errorf("exit code = %d, want 1", r.code)
	}
	if r.stdout != "a stopped\nb stopped\n" {
		t.Errorf("stdout = %q, want a then b stopped", r.stdout)
	}
	if r.stderr != "error: stopping missing: no VM named missing: see 'banger vm list'\n" {
		t.Errorf("stderr = %q, want one error line for missing", r.stderr)
	}
	for _, n := range []string{"a", "b"} {
		if vm, _ := f.VM(n); vm.State != "stopped" {
			t.Errorf("vm %s state = %q, want stopped", n, vm.State)
		}
	}
}

func TestStopFanOutJSON(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "a", State: "running"})
	r := run(t, "--socket", f.Socket, "vm", "stop", "--json", "a", "nope", "a")
	if r.code != 1 {
		t.Errorf("exit code = %d, want 1", r.code)
	}
	var res []rpc.Result
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("stdout is not []Result: %v", err)
	}
	if len(res) != 2 || res[0].Name != "a" || !res[0].OK || res[0].VM == nil || res[1].Name != "nope" || res[1].OK || res[1].Error == "" {
		t.Errorf("results = %+v, want a ok and nope failed", res)
	}
}

func TestDeleteNeedsForceWhenRunning(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "up", State: "running"})
	f.Add(rpc.VM{Name: "down", State: "stopped"})
	r := run(t, "--socket", f.Socket, "vm", "rm", "up", "down")
	if r.code != 1 || r.stdout != "down deleted\n" || !strings.Contains(r.stderr, "--force") {
		t.Errorf("rm up down = %d %q %q, want 1, down deleted, and a --force hint", r.code, r.stdout, r.stderr)
	}
	r = run(t, "--socket", f.Socket, "vm", "delete", "-f", "up")
	if r.code != 0 || r.stdout != "up deleted\n" {
		t.Errorf("delete -f up = %d %q, want 0 and up deleted", r.code, r.stdout)
	}
}

func TestSet(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "a", State: "running"})
	if r := run(t, "--socket", f.Socket, "vm", "set", "--nat", "a"); r.code != 0 || r.stdout != "a: nat on\n" {
		t.Errorf("set --nat a = %d %q, want 0 and a: nat on", r.code, r.stdout)
	}
	if vm, _ := f.VM("a"); !vm.NAT {
		t.Errorf("vm a nat = false after set --nat")
	}
	if r := run(t, "--socket", f.Socket, "vm", "set", "--no-nat", "a"); r.code != 0 || r.stdout != "a: nat off\n" {
		t.Errorf("set --no-nat a = %d %q, want 0 and a: nat off", r.code, r.stdout)
	}
}

func TestListAndShow(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running", OpencodePassword: "pw-box", Image: "docker", IP: "172.30.0.9", VCPUs: 2, MemoryMiB: 1536, NAT: true,
		Stages: []rpc.Stage{{Name: "boot", DurationMS: 1200}}})
	r := run(t, "--socket", f.Socket, "vm", "ls")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 {
		t.Fatalf("vm ls = %d %q, want a header and one row", r.code, r.stdout)
	}
	if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"NAME", "STATE", "IMAGE", "IP", "VCPUS", "MEMORY", "NAT", "AGE"}) {
		t.Errorf("header = %q", got)
	}
	if got := strings.Fields(lines[1]); !slices.Equal(got, []string{"box", "running", "docker", "172.30.0.9", "2", "1.5G", "on", "5m"}) {
		t.Errorf("row = %q", got)
	}
	r = run(t, "--socket", f.Socket, "vm", "show", "box")
	for _, want := range []string{"state:", "running", "172.30.0.9", "boot", "1.2s", "http://box.vm:4096, basic auth opencode:pw-box"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("vm show lacks %q", want)
		}
	}
	r = run(t, "--socket", f.Socket, "vm", "show", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "error: showing vm nope: no VM named nope: see 'banger vm list'") {
		t.Errorf("vm show nope = %d %q", r.code, r.stderr)
	}
}

// fakeSSH writes a script that prints its arguments one per line and exits
// with $FAKE_SSH_EXIT.
func fakeSSH(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "ssh")
	script := "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\nexit ${FAKE_SSH_EXIT:-0}\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGER_SSH", p)
}

func TestSSHArgv(t *testing.T) {
	dir := isolate(t)
	fakeSSH(t, dir)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running", IP: "172.30.0.9"})
	base := []string{"-i", "/rt/id_ed25519", "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=/state/known_hosts",
		"-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=box.vm", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "root@172.30.0.9"}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"box"}, base},
		{[]string{"box", "--", "uname", "-a"}, append(slices.Clone(base), "uname", "-a")},
		{[]string{"box", "ls", "-la"}, append(slices.Clone(base), "ls", "-la")},
	} {
		r := run(t, append([]string{"--socket", f.Socket, "vm", "ssh"}, tc.args...)...)
		got := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if r.code != 0 || !slices.Equal(got, tc.want) {
			t.Errorf("vm ssh %q = %d, argv %q, want 0, %q", tc.args, r.code, got, tc.want)
		}
		if strings.Contains(r.stdout, "StrictHostKeyChecking=no") {
			t.Errorf("vm ssh %q disables host key checking", tc.args)
		}
		interactive := len(tc.args) == 1
		if got := strings.Contains(r.stderr, "box is still running. Stop it with: banger vm stop box"); got != interactive {
			t.Errorf("vm ssh %q reminder = %v, want %v", tc.args, got, interactive)
		}
	}
}

func TestSSHExitCode(t *testing.T) {
	dir := isolate(t)
	fakeSSH(t, dir)
	t.Setenv("FAKE_SSH_EXIT", "7")
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running", IP: "172.30.0.9"})
	r := run(t, "--socket", f.Socket, "vm", "ssh", "box", "false")
	if r.code != 7 || strings.Contains(r.stderr, "error:") {
		t.Errorf("vm ssh box false = %d %q, want 7 and no error line", r.code, r.stderr)
	}
}

func TestSSHNotRunning(t *testing.T) {
	dir := isolate(t)
	fakeSSH(t, dir)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "stopped", IP: "172.30.0.9"})
	r := run(t, "--socket", f.Socket, "vm", "ssh", "box")
	if r.code != 1 || !strings.Contains(r.stderr, "banger vm start box") || r.stdout != "" {
		t.Errorf("vm ssh on a stopped vm = %d %q %q, want 1 and a start hint", r.code, r.stdout, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	isolate(t)
	for _, tc := range []struct {
		args []string
		want string // in stderr, besides the --help hint
	}{
		{[]string{"frobnicate"}, ""},
		{[]string{"vm", "frobnicate"}, ""},
		{[]string{"vm", "create"}, ""},
		{[]string{"vm", "create", "a", "b"}, ""},
		{[]string{"vm", "create", "a", "--name", "b"}, ""},
		{[]string{"vm", "create", "a", "--memory", "lots"}, ""},
		{[]string{"vm", "create", "a", "--vcpus", "0"}, "--vcpus 0 is no VM"},
		{[]string{"vm", "stop"}, ""},
		{[]string{"vm", "show"}, ""},
		{[]string{"vm", "show", "a", "b"}, ""},
		{[]string{"vm", "set", "a"}, ""},
		{[]string{"vm", "set", "--nat", "--no-nat", "a"}, ""},
		{[]string{"vm", "ssh"}, ""},
		{[]string{"vm", "list", "--bogus"}, ""},
		{[]string{"daemon", "status", "extra"}, ""},
	} {
		r := run(t, tc.args...)
		if r.code != 2 {
			t.Errorf("banger %q = %d, want 2", tc.args, r.code)
		}
		if !strings.HasPrefix(r.stderr, "error: ") || strings.Count(r.stderr, "error:") != 1 || !strings.Contains(r.stderr, "--help' for usage") {
			t.Errorf("banger %q stderr = %q, want one error line and a --help hint", tc.args, r.stderr)
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("banger %q stderr = %q, want %q in it", tc.args, r.stderr, tc.want)
		}
	}
}

func TestUnknownCommandSuggests(t *testing.T) {
	isolate(t)
	r := run(t, "vm", "lst")
	if r.code != 2 || !strings.Contains(r.stderr, `did you mean "list"?`) {
		t.Errorf("vm lst = %d %q, want 2 and a suggestion", r.code, r.stderr)
	}
}

func TestHelpHasExamples(t *testing.T) {
	isolate(t)
	for _, args := range [][]string{
		{"--help"}, {"vm", "--help"}, {"vm", "create", "--help"}, {"vm", "ssh", "--help"},
		{"vm", "stop", "-h"}, {"daemon", "stop", "--help"}, {"help", "vm", "list"}, {"vm"}, {"ui", "--help"},
		{"vm", "suspend", "--help"}, {"vm", "resume", "--help"}, {"vm", "fork", "--help"}, {"image", "warm", "--help"},
	} {
		r := run(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("banger %q = %d, want 0 and help with examples", args, r.code)
		}
	}
}

func TestDaemonStatusNotRunning(t *testing.T) {
	dir := isolate(t)
	r := run(t, "--socket", filepath.Join(dir, "none.sock"), "daemon", "status")
	if r.code != 1 || !strings.Contains(r.stdout, "bangerd is not running") {
		t.Errorf("daemon status = %d %q, want 1 and bangerd is not running", r.code, r.stdout)
	}
}

func TestDaemonMissingBinary(t *testing.T) {
	dir := isolate(t)
	t.Setenv("BANGER_DAEMON", "")
	t.Setenv("PATH", dir)
	r := run(t, "--socket", filepath.Join(dir, "none.sock"), "vm", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "BANGER_DAEMON") {
		t.Errorf("vm list without bangerd = %d %q, want 1 and how to point at bangerd", r.code, r.stderr)
	}
}

func TestAutoStart(t *testing.T) {
	dir := isolate(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGER_DAEMON", exe)
	t.Setenv("BANGER_FAKE_DAEMON", "1")
	sock := filepath.Join(dir, "run", "banger", "bangerd.sock")
	t.Cleanup(func() { run(t, "daemon", "stop") })

	r := run(t, "vm", "list", "--json")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("vm list = %d %q, want 0 and []", r.code, r.stdout)
	}
	if r.stderr != "starting bangerd...\n" {
		t.Errorf("stderr = %q, want starting bangerd... once", r.stderr)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("socket: %v", err)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "state", "banger", "bangerd.log"))
	if !strings.Contains(string(log), "fake bangerd listening on "+sock) {
		t.Errorf("bangerd log = %q, want the daemon's output", log)
	}
	if r := run(t, "daemon", "status"); r.code != 0 || !strings.Contains(r.stdout, "running") {
		t.Errorf("daemon status = %d %q, want 0 and running", r.code, r.stdout)
	}
	if r := run(t, "daemon", "start"); r.code != 0 || !strings.Contains(r.stdout, "already running") {
		t.Errorf("daemon start = %d %q, want 0 and already running", r.code, r.stdout)
	}
	if r := run(t, "daemon", "stop"); r.code != 0 || !strings.Contains(r.stdout, "bangerd stopped") {
		t.Errorf("daemon stop = %d %q, want 0 and bangerd stopped", r.code, r.stdout)
	}
	if r := run(t, "daemon", "status"); r.code != 1 {
		t.Errorf("daemon status after stop = %d, want 1", r.code)
	}
}

func TestCompletion(t *testing.T) {
	dir := isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "web", State: "running"})
	f.Add(rpc.VM{Name: "db", State: "stopped"})
	f.Add(rpc.VM{Name: "worker", State: "running"})
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"vm", "stop", ""}, []string{"web", "worker"}},
		{[]string{"vm", "stop", "web", "w"}, []string{"worker"}},
		{[]string{"vm", "start", ""}, []string{"db"}},
		{[]string{"vm", "suspend", ""}, []string{"web", "worker"}},
		{[]string{"vm", "fork", ""}, []string{"web", "worker"}},
		{[]string{"vm", "fork", "web", ""}, nil},
		{[]string{"vm", "show", "d"}, []string{"db"}},
		{[]string{"vm", "show", "db", ""}, nil},
	} {
		r := run(t, append([]string{"__completeNoDesc", "--socket", f.Socket}, tc.args...)...)
		var got []string
		for _, l := range strings.Split(r.stdout, "\n") {
			if l != "" && !strings.HasPrefix(l, ":") {
				got = append(got, l)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("complete %q = %q, want %q", tc.args, got, tc.want)
		}
	}
	// Completion never starts bangerd.
	r := run(t, "__complete", "--socket", filepath.Join(dir, "none.sock"), "vm", "stop", "")
	if strings.Contains(r.stderr, "starting bangerd") || r.code != 0 {
		t.Errorf("completion without bangerd = %d %q, want 0 and no daemon start", r.code, r.stderr)
	}
}

func TestLogsAndImages(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running"})
	if r := run(t, "--socket", f.Socket, "vm", "logs", "box"); r.code != 0 || r.stdout != "console of box\n" {
		t.Errorf("vm logs box = %d %q", r.code, r.stdout)
	}
	r := run(t, "--socket", f.Socket, "image", "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "docker") || !strings.Contains(r.stdout, "minimal") {
		t.Errorf("image ls = %d %q", r.code, r.stdout)
	}
}

func TestProgressTTY(t *testing.T) {
	t.Setenv("NO_COLOR", "1")
	var buf bytes.Buffer
	p := newProgress(&buf, true)
	now := time.Unix(0, 0)
	p.mu.Lock()
	p.now = func() time.Time { return now }
	p.mu.Unlock()
	p.Event(rpc.Event{Type: "stage", Stage: "disks", Message: "preparing disks"})
	p.Event(rpc.Event{Type: "stage_done", Stage: "disks", DurationMS: 412})
	p.Event(rpc.Event{Type: "stage", Stage: "boot", Message: "booting"})
	now = now.Add(2 * time.Second)
	p.Close(failed)
	out := buf.String()
	for _, want := range []string{"⠋ preparing disks 0.0s", "\r\033[K✓ preparing disks 0.4s\n", "\r\033[K✗ booting 2.0s\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress output %q lacks %q", out, want)
		}
	}
}

func TestCreateWorkSizeAndPublish(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	r := run(t, "--socket", f.Socket, "vm", "create", "web", "--work-size", "64G", "-p", "18080:80", "--publish", "0.0.0.0:15353:53/udp")
	if r.code != 0 {
		t.Fatalf("create = %d %q", r.code, r.stderr)
	}
	want := rpc.CreateRequest{Name: "web", WorkSize: "64G", Ports: []rpc.Port{
		{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 18080, GuestPort: 80},
		{Proto: "udp", HostIP: "0.0.0.0", HostPort: 15353, GuestPort: 53},
	}}
	if creates := f.Creates(); len(creates) != 1 || !reflect.DeepEqual(creates[0], want) {
		t.Errorf("create requests = %+v, want [%+v]", creates, want)
	}
	r = run(t, "--socket", f.Socket, "vm", "show", "web")
	var rows []string
	for _, l := range strings.Split(r.stdout, "\n") {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	for _, want := range []string{"/root disk: 64G", "ports: 127.0.0.1:18080 -> 80/tcp (listening)", "0.0.0.0:15353 -> 53/udp (listening)"} {
		if !slices.Contains(rows, want) {
			t.Errorf("vm show lacks the row %q:\n%s", want, r.stdout)
		}
	}
	r = run(t, "--socket", f.Socket, "vm", "list", "--json")
	var vms []rpc.VM
	if err := json.Unmarshal([]byte(r.stdout), &vms); err != nil || len(vms) != 1 || len(vms[0].Ports) != 2 || vms[0].WorkSizeBytes != 64<<30 {
		t.Errorf("vm list --json = %q (%v), want web with its ports and work size", r.stdout, err)
	}
	// Bad specs are usage errors, and nothing reaches bangerd.
	for _, args := range [][]string{
		{"-p", "80"}, {"-p", "8080:80/sctp"}, {"-p", "::1:8080:80"}, {"-p", "8080:80", "-p", "0.0.0.0:8080:81"}, {"--work-size", "lots"}, {"--work-size", "0"},
	} {
		r := run(t, append([]string{"--socket", f.Socket, "vm", "create", "bad"}, args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "--help' for usage") {
			t.Errorf("create %q = %d %q, want a usage error", args, r.code, r.stderr)
		}
	}
	if n := len(f.Creates()); n != 1 {
		t.Errorf("bad creates reached bangerd: %d requests", n)
	}
}

func TestPortCommands(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "box", State: "running"})
	f.Add(rpc.VM{Name: "idle", State: "stopped"})
	sock := []string{"--socket", f.Socket, "vm", "port"}
	if r := run(t, append(sock, "list", "box")...); r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "box publishes no ports. Add one with: banger vm port add box") {
		t.Errorf("port list of none = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, append(sock, "list", "box", "--json")...); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("port list --json of none = %d %q, want []", r.code, r.stdout)
	}
	r := run(t, append(sock, "add", "box", "18080:80", "15353:53/udp")...)
	if r.code != 0 || r.stdout != "box: published 127.0.0.1:18080 -> 80/tcp (answering now)\nbox: published 127.0.0.1:15353 -> 53/udp (answering now)\n" {
		t.Errorf("port add box = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, append(sock, "add", "idle", "18081:80")...); r.code != 0 || r.stdout != "idle: published 127.0.0.1:18081 -> 80/tcp (from its next start)\n" {
		t.Errorf("port add idle = %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = run(t, append(sock, "ls", "box")...)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 || !slices.Equal(strings.Fields(lines[0]), []string{"HOST", "GUEST", "PROTO", "STATE"}) ||
		!slices.Equal(strings.Fields(lines[2]), []string{"127.0.0.1:15353", "53", "udp", "listening"}) {
		t.Errorf("port ls box = %d %q", r.code, r.stdout)
	}
	// Refusals: another VM's port, a bad spec, a port not published.
	if r := run(t, append(sock, "add", "idle", "18080:80")...); r.code != 1 || !strings.Contains(r.stderr, "error: publishing ports of vm idle: host port 127.0.0.1:18080/tcp is published by VM box already") {
		t.Errorf("port add of box's port to idle = %d %q", r.code, r.stderr)
	}
	for _, args := range [][]string{{"add", "box"}, {"add", "box", "80"}, {"rm", "box"}, {"rm", "box", "x"}, {"list"}} {
		if r := run(t, append(sock, args...)...); r.code != 2 {
			t.Errorf("port %q = %d %q, want a usage error", args, r.code, r.stderr)
		}
	}
	if r := run(t, append(sock, "rm", "box", "18080", "9999")...); r.code != 1 || !strings.Contains(r.stderr, "VM box publishes no host port 9999/tcp") {
		t.Errorf("port rm of an unpublished port = %d %q", r.code, r.stderr)
	}
	if vm, _ := f.VM("box"); len(vm.Ports) != 2 {
		t.Errorf("a refused rm removed ports: %+v", vm.Ports)
	}
	if r := run(t, append(sock, "rm", "box", "18080")...); r.code != 0 || r.stdout != "box: removed 127.0.0.1:18080 -> 80/tcp\n" {
		t.Errorf("port rm box 18080 = %d %q %q", r.code, r.stdout, r.stderr)
	}
	// Completion offers the VM's published ports.
	r = run(t, "__completeNoDesc", "--socket", f.Socket, "vm", "port", "rm", "box", "")
	if !strings.Contains(r.stdout, "127.0.0.1:15353/udp\n") || strings.Contains(r.stdout, "18080") {
		t.Errorf("completion of port rm box = %q", r.stdout)
	}
	r = run(t, "__completeNoDesc", "--socket", f.Socket, "vm", "port", "add", "")
	if !strings.Contains(r.stdout, "box\n") || !strings.Contains(r.stdout, "idle\n") {
		t.Errorf("completion of port add = %q", r.stdout)
	}
}

func TestSetWorkSize(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "a", State: "stopped", WorkSizeBytes: 16 << 30})
	f.Add(rpc.VM{Name: "b", State: "running", WorkSizeBytes: 16 << 30})
	if r := run(t, "--socket", f.Socket, "vm", "set", "--work-size", "64G", "a"); r.code != 0 || r.stdout != "a: /root 64G\n" {
		t.Errorf("set --work-size 64G a = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if vm, _ := f.VM("a"); vm.WorkSizeBytes != 64<<30 {
		t.Errorf("a's work size = %d after set", vm.WorkSizeBytes)
	}
	r := run(t, "--socket", f.Socket, "vm", "set", "--work-size", "32G", "a", "b")
	if r.code != 1 || !strings.Contains(r.stderr, "error: changing settings of a: work size 32G is smaller") || !strings.Contains(r.stderr, "error: changing settings of b: VM b is running: /root grows only while the VM is stopped") {
		t.Errorf("set --work-size 32G a b = %d %q", r.code, r.stderr)
	}
	if r := run(t, "--socket", f.Socket, "vm", "set", "--nat", "--work-size", "128G", "a"); r.code != 0 || r.stdout != "a: nat on, /root 128G\n" {
		t.Errorf("set --nat --work-size = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "--socket", f.Socket, "vm", "set", "--work-size", "big", "a"); r.code != 2 {
		t.Errorf("set --work-size big = %d, want a usage error", r.code)
	}
}
