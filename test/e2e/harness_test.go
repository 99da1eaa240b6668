// Package e2e boots real VMs through the real bangerd and banger binaries, each test inside a network namespace it creates.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/vmtest"
)

// requireVM gates the tests that boot VMs through the real binaries, and
// returns the bin and runtime dirs.
func requireVM(t testing.TB) (bin, runtime string) {
	t.Helper()
	bin, runtime = os.Getenv("BANGER_BIN"), os.Getenv("BANGER_RUNTIME")
	built := "run them with 'make test', which builds both"
	vmtest.Require(t, "booting VMs through bangerd", vmtest.Root(),
		vmtest.Var("BANGER_BIN", built), vmtest.Var("BANGER_RUNTIME", built),
		vmtest.File(filepath.Join(bin, "banger"), "make build"), vmtest.File(filepath.Join(bin, "bangerd"), "make build"),
		vmtest.File(filepath.Join(runtime, "bundle.json"), "make runtime-bundle"),
		vmtest.Tool("qemu-system-x86_64", "qemu-system-x86"))
	return bin, runtime
}

// env is one daemon with its own state, inside its own network namespace
// (or one another env made), run by root or by an ordinary test user.
type env struct {
	t       testing.TB
	ns      *vmtest.NS
	user    *testUser // nil: root
	bin     string
	runtime string
	root    string
	socket  string
	daemon  *exec.Cmd
	pid     int // bangerd's own pid
	logPath string
	extra   []string
}

// envOpts configure newEnvWith.
type envOpts struct {
	config string     // config.toml; "" means defaultConfig
	ns     *vmtest.NS // nil: a new namespace
	user   *testUser  // nil: root
}

// defaultConfig keeps the daemon's DNS forwarding inside the test: no
// upstream resolvers unless a test names one in its namespaces. No image
// is snapshotted in the background after a create (a template VM would
// run beside the test's): the warm tests turn it on.
const defaultConfig = "dns_upstreams = []\nwarm_after_create = false\n"

func newEnv(t testing.TB) *env {
	return newEnvWith(t, envOpts{})
}

// newEnvConfig starts a daemon with the given config.toml contents.
func newEnvConfig(t testing.TB, config string) *env {
	return newEnvWith(t, envOpts{config: config})
}

// newEnvWith starts a daemon as o says.
func newEnvWith(t testing.TB, o envOpts) *env {
	bin, runtime := requireVM(t)
	if o.config == "" {
		o.config = defaultConfig
	}
	ns := o.ns
	if ns == nil {
		ns = vmtest.NewNS(t)
	}
	// Unix socket paths must stay short, so avoid t.TempDir's long names.
	root, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ns: ns, user: o.user, bin: bin, runtime: runtime, root: root}
	e.socket = filepath.Join(root, "run", "banger", "bangerd.sock")
	e.logPath = filepath.Join(root, "bangerd.log")
	if err := os.MkdirAll(filepath.Join(root, "config", "banger"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "config", "banger", "config.toml"), []byte(o.config), 0o600); err != nil {
		t.Fatal(err)
	}
	if o.user != nil {
		e.runtime = o.user.bundleView(t, runtime, filepath.Join(root, "bundle"))
		o.user.own(t, root)
	}
	t.Cleanup(func() {
		e.cleanup()
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil {
				t.Logf("bangerd log:\n%s", tail(string(b), 60))
			}
		}
		os.RemoveAll(root)
	})
	e.startDaemon()
	return e
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (e *env) environ() []string {
	base := os.Environ()
	if e.user != nil {
		base = e.user.environ()
	}
	return append(base,
		"XDG_CONFIG_HOME="+filepath.Join(e.root, "config"),
		"XDG_STATE_HOME="+filepath.Join(e.root, "state"),
		"XDG_DATA_HOME="+filepath.Join(e.root, "data"),
		"XDG_RUNTIME_DIR="+filepath.Join(e.root, "run"),
		"BANGER_RUNTIME="+e.runtime,
		"BANGER_SOCKET="+e.socket,
		"BANGER_DAEMON="+filepath.Join(e.bin, "bangerd"),
	)
}

// startDaemon runs bangerd inside the namespace and waits for its socket.
func (e *env) startDaemon() {
	e.t.Helper()
	if e.pid != 0 {
		// A previous bangerd holds its lock until it has exited.
		for i := 0; i < 200 && syscall.Kill(e.pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := e.command(context.Background(), filepath.Join(e.bin, "bangerd"), append([]string{"--socket", e.socket, "--log-level", "debug"}, e.extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting bangerd: %v", err)
	}
	e.daemon = cmd
	go cmd.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := e.client().Status(ctx)
		cancel()
		if err == nil {
			e.pid = st.PID
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(e.logPath)
	e.t.Fatalf("bangerd did not come up on %s:\n%s", e.socket, b)
}

// killDaemon SIGKILLs bangerd itself (its pid from its status: a test
// user's bangerd runs under runuser).
func (e *env) killDaemon() {
	e.t.Helper()
	if err := syscall.Kill(e.pid, syscall.SIGKILL); err != nil {
		e.t.Fatalf("killing bangerd %d: %v", e.pid, err)
	}
	for i := 0; i < 100; i++ {
		if syscall.Kill(e.pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("bangerd %d still alive after SIGKILL", e.pid)
}

func (e *env) cleanup() {
	if e.daemon == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if vms, err := e.client().ListVMs(ctx); err == nil {
		for _, vm := range vms {
			if err := e.client().DeleteVM(ctx, vm.Name); err != nil {
				e.t.Errorf("cleanup: deleting %s: %v", vm.Name, err)
			}
		}
	}
	e.client().Shutdown(ctx)
	time.Sleep(200 * time.Millisecond)
	// netns.New's cleanup kills whatever is left inside and removes the namespace.
}

// with returns e reporting to t, for use inside subtests.
func (e *env) with(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

func (e *env) client() *rpc.Client { return rpc.NewClient(e.socket) }

// command runs bin inside the namespace as the env's user, with its
// environment.
func (e *env) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	if e.user == nil {
		cmd := e.ns.Command(ctx, bin, args...)
		cmd.Env = e.environ()
		return cmd
	}
	// runuser starts the program as the user with exactly this environment.
	argv := append([]string{"-u", e.user.Name, "--", "env", "-i"}, e.environ()...)
	return e.ns.Command(ctx, "runuser", append(append(argv, bin), args...)...)
}

// banger runs the CLI inside the namespace.
func (e *env) banger(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	cmd := e.command(ctx, filepath.Join(e.bin, "banger"), args...)
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	err = cmd.Run()
	return o.String(), s.String(), err
}

// must runs the CLI and fails the test on a non-zero exit.
func (e *env) must(args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, errOut, err := e.banger(ctx, args...)
	if err != nil {
		e.t.Fatalf("banger %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// create makes a VM and returns its API view.
func (e *env) create(name string, args ...string) rpc.VM {
	e.t.Helper()
	out := e.must(append([]string{"vm", "create", "--name", name, "--json"}, args...)...)
	var vm rpc.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		e.t.Fatalf("decoding create output %q: %v", out, err)
	}
	if vm.State != "running" {
		e.t.Fatalf("vm create %s: state = %q, want running", name, vm.State)
	}
	return vm
}

func (e *env) show(name string) (rpc.VM, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := e.client().GetVM(ctx, name)
	if err != nil {
		return rpc.VM{}, err
	}
	return *vm, nil
}

// ssh runs a command in the guest through 'banger vm ssh'.
func (e *env) ssh(name string, command ...string) string {
	e.t.Helper()
	return e.must(append([]string{"vm", "ssh", name, "--"}, command...)...)
}

// links lists the network devices in the namespace.
func (e *env) links() []string {
	out, err := vmtest.Command("ip", "-n", e.ns.Name, "-o", "link", "show").Output()
	if err != nil {
		e.t.Fatalf("listing links: %v", err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return names
}

// hypervisorPIDs lists the qemu or firecracker processes in the namespace.
func (e *env) hypervisorPIDs() []int {
	var pids []int
	for _, pid := range e.ns.PIDs() {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		c := strings.TrimSpace(string(comm))
		if strings.HasPrefix(c, "qemu-system") || c == "firecracker" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// diskFiles are the names of vm's disk files in its directory.
func diskFiles(vm rpc.VM) []string {
	if vm.DiskFormat == "qcow2" {
		return []string{"root.qcow2", "work.qcow2"}
	}
	return []string{"rootfs.ext4", "work.ext4"}
}

// virtualSize is the size of the disk in the file at path: a qcow2
// overlay's virtual size, a raw file's size.
func virtualSize(t testing.TB, path string) int64 {
	t.Helper()
	if !strings.HasSuffix(path, ".qcow2") {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	out, err := exec.Command("qemu-img", "info", "--force-share", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	return info.VirtualSize
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
