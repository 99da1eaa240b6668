package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// guestServer builds the port tests' server (testdata/guestserver), static,
// for the guests, and returns its path.
func guestServer(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guestserver")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./testdata/guestserver")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the guest server: %v\n%s", err, b)
	}
	os.Chmod(out, 0o755)
	return out
}

// startGuestServer copies the server into the VM (once) and starts it
// there, detached, on TCP 8080 and UDP 5353; it waits until it answers
// inside the guest.
func (e *env) startGuestServer(vm, bin string) {
	e.t.Helper()
	if out, _, _ := e.banger(context.Background(), "vm", "ssh", vm, "--", "test", "-x", "/root/guestserver", "&&", "echo", "there"); !strings.Contains(out, "there") {
		e.must("vm", "cp", bin, vm+":/root/guestserver")
	}
	e.ssh(vm, "setsid", "-f", "/root/guestserver", "-http", ":8080", "-udp", ":5353", "</dev/null", ">/dev/null", "2>&1")
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, _, _ := e.banger(ctx, "vm", "ssh", vm, "--", "ss", "-Hlnt", "sport", "=", ":8080")
		cancel()
		if strings.Contains(out, "8080") {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the guest server in %s does not listen on 8080", vm)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// nsHTTP is an HTTP client whose connections are made inside the env's
// namespace, where bangerd listens.
func (e *env) nsHTTP() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, network, a string) (net.Conn, error) { return e.ns.Dial(ctx, network, a) },
	}}
}

// get fetches url from inside the namespace and returns its body.
func (e *env) get(url string) (string, error) {
	resp, err := e.nsHTTP().Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// waitAnswer waits until url answers (with any status) from inside the
// namespace.
func (e *env) waitAnswer(url string, within time.Duration) {
	e.t.Helper()
	start := time.Now()
	for {
		resp, err := e.nsHTTP().Get(url)
		if err == nil {
			resp.Body.Close()
			e.t.Logf("%s answers %v after bangerd's socket", url, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > within {
			e.t.Fatalf("%s does not answer within %v: %v", url, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// udpAsk sends msg to addr from inside the namespace and returns the
// answer.
func (e *env) udpAsk(addr, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.ns.Dial(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	// A datagram may be lost; ask a few times.
	for i := 0; i < 5; i++ {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err = c.Write([]byte(msg)); err != nil {
			continue
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", err
}

// listeners lists what listens in the namespace (ss), one "proto addr"
// line each.
func (e *env) listeners() string {
	e.t.Helper()
	out, err := e.ns.Command(context.Background(), "ss", "-Hlntu").Output()
	if err != nil {
		e.t.Fatalf("ss in the namespace: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) >= 5 {
			lines = append(lines, f[0]+" "+f[4])
		}
	}
	return strings.Join(lines, "\n")
}

// holdPort listens on addr inside the namespace, as another program
// would, until the test ends.
func (e *env) holdPort(addr string) {
	e.t.Helper()
	var l net.Listener
	if err := e.ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		e.t.Fatalf("holding %s: %v", addr, err)
	}
	e.t.Cleanup(func() { l.Close() })
}

// vmJSON is 'banger vm show --json NAME'.
func (e *env) vmJSON(name string) rpc.VM {
	e.t.Helper()
	var v rpc.VM
	if out := e.must("vm", "show", "--json", name); json.Unmarshal([]byte(out), &v) != nil {
		e.t.Fatalf("vm show --json %s = %q", name, out)
	}
	return v
}

// portsOf is a VM's ports as "HOSTIP:HOSTPORT:GUESTPORT/PROTO(listening)".
func portsOf(v rpc.VM) string {
	var ps []string
	for _, p := range v.Ports {
		ps = append(ps, fmt.Sprintf("%s:%d:%d/%s(%t)", p.HostIP, p.HostPort, p.GuestPort, p.Proto, p.Listening))
	}
	return strings.Join(ps, " ")
}

// guestDF is df's size and use of /root in the guest, in bytes.
func (e *env) guestDF(vm string) (size, used int64) {
	e.t.Helper()
	f := strings.Fields(e.ssh(vm, "df", "-B1", "--output=size,used", "/root", "|", "tail", "-n", "1"))
	if len(f) != 2 {
		e.t.Fatalf("df /root in %s: %q", vm, f)
	}
	size, _ = strconv.ParseInt(f[0], 10, 64)
	used, _ = strconv.ParseInt(f[1], 10, 64)
	return size, used
}

// TestRoomAndPorts proves /root's room and published ports on one minimal
// VM: a 16G sparse /root that takes 1 GiB, grown after a stop with its
// files kept; TCP and UDP ports answering on the host's loopback (inside
// the test's namespace, where bangerd runs), added and removed while the
// VM runs, refused clearly when busy, gone at stop, back after a start and
// after bangerd is killed and restarted, and nothing left after delete.
func TestRoomAndPorts(t *testing.T) {
	e := newEnv(t)
	server := guestServer(t)
	start := time.Now()
	vm := e.create("pub", "--image", "minimal", "--publish", "18080:8080", "-p", "15353:5353/udp")
	t.Logf("created pub at %s in %v", vm.IP, time.Since(start).Round(time.Millisecond))
	if want := "127.0.0.1:18080:8080/tcp(true) 127.0.0.1:15353:5353/udp(true)"; portsOf(vm) != want || vm.WorkSizeBytes != 16<<30 {
		t.Fatalf("created with ports %q and /root %d, want %q and 16G", portsOf(vm), vm.WorkSizeBytes, want)
	}
	work := filepath.Join(vm.Dir, diskFiles(vm)[1])
	e.startGuestServer("pub", server)
	hello := "hello from pub\n"
	answers := func(t *testing.T, when string) {
		t.Helper()
		e := e.with(t)
		if got, err := e.get("http://127.0.0.1:18080/"); err != nil || got != hello {
			t.Errorf("%s: http://127.0.0.1:18080/ = %q, %v; want %q", when, got, err, hello)
		}
		if got, err := e.udpAsk("127.0.0.1:15353", "ping"); err != nil || got != "echo from pub: ping" {
			t.Errorf("%s: udp 127.0.0.1:15353 = %q, %v; want the guest's echo", when, got, err)
		}
	}
	refused := func(t *testing.T, when string) {
		t.Helper()
		e := e.with(t)
		if got, err := e.get("http://127.0.0.1:18080/"); err == nil {
			t.Errorf("%s: 127.0.0.1:18080 still answers %q", when, got)
		}
		if ls := e.listeners(); strings.Contains(ls, ":18080") || strings.Contains(ls, ":15353") {
			t.Errorf("%s: bangerd still listens:\n%s", when, ls)
		}
	}

	t.Run("a 16G sparse /root takes 1 GiB", func(t *testing.T) {
		e := e.with(t)
		size, _ := e.guestDF("pub")
		// ext4's own tables take some: 15.7G of 16G with a seed made for
		// it, 15.0G with a bundle's older seed of 1 KiB blocks.
		t.Logf("df /root: %d bytes (%.1f GiB)", size, float64(size)/(1<<30))
		if size < 14<<30 || size > 16<<30 {
			t.Errorf("df /root size = %d, want about 16G", size)
		}
		start := time.Now()
		e.ssh("pub", "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=1024", "conv=fsync", "status=none")
		e.ssh("pub", "head", "-c", "4000000", "/dev/urandom", ">", "/root/marker")
		t.Logf("wrote 1 GiB into /root in %v", time.Since(start).Round(time.Millisecond))
		if got := strings.TrimSpace(e.ssh("pub", "stat", "-c", "%s", "/root/big")); got != "1073741824" {
			t.Errorf("/root/big is %s bytes, want 1073741824", got)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(work, &st); err != nil {
			t.Fatal(err)
		}
		if size := virtualSize(t, work); size != 16<<30 || st.Blocks*512 < 1<<30 || st.Blocks*512 > 3<<30 {
			t.Errorf("host file %s: a %d-byte disk, %d allocated; want 16G, sparse, with the 1 GiB in it", work, size, st.Blocks*512)
		}
	})
	marker := strings.Fields(e.ssh("pub", "sha256sum", "/root/marker"))[0]

	t.Run("ports answer on host loopback", func(t *testing.T) {
		answers(t, "after create")
		e := e.with(t)
		// Only the loopback address listens: the host's other addresses
		// (here the bridge's) do not answer.
		if ls := e.listeners(); !strings.Contains(ls, "tcp 127.0.0.1:18080") || !strings.Contains(ls, "udp 127.0.0.1:15353") {
			t.Errorf("listeners:\n%s\nwant 127.0.0.1:18080/tcp and 127.0.0.1:15353/udp", ls)
		}
		var vms []rpc.VM
		if err := json.Unmarshal([]byte(e.must("vm", "list", "--json")), &vms); err != nil || len(vms) != 1 || portsOf(vms[0]) != portsOf(vm) {
			t.Errorf("vm list --json ports = %+v, %v", vms, err)
		}
		if out := e.must("vm", "port", "list", "pub"); !strings.Contains(out, "127.0.0.1:18080   8080    tcp     listening") {
			t.Errorf("vm port list pub:\n%s", out)
		}
	})

	t.Run("busy and taken ports are refused and change nothing", func(t *testing.T) {
		e := e.with(t)
		e.holdPort("127.0.0.1:18090")
		e.fails(1, "host port 127.0.0.1:18090/tcp is already in use: pick another host port", "vm", "port", "add", "pub", "18090:8080")
		e.fails(1, "host port 127.0.0.1:18090/tcp is already in use", "vm", "create", "--name", "late", "--image", "minimal", "-p", "18090:80")
		e.fails(1, "host port 0.0.0.0:18080/tcp is published by VM pub already", "vm", "create", "--name", "late", "--image", "minimal", "-p", "0.0.0.0:18080:80")
		e.fails(2, "both take host port 18091/tcp", "vm", "port", "add", "pub", "18091:80", "0.0.0.0:18091:81")
		if got := portsOf(e.vmJSON("pub")); got != portsOf(vm) {
			t.Errorf("ports after refusals = %q, want %q", got, portsOf(vm))
		}
		if vms, _ := e.client().ListVMs(context.Background()); len(vms) != 1 {
			t.Errorf("refused creates left VMs: %+v", vms)
		}
	})

	t.Run("add and remove while running", func(t *testing.T) {
		e := e.with(t)
		out := e.must("vm", "port", "add", "pub", "18081:8080")
		if !strings.Contains(out, "published 127.0.0.1:18081 -> 8080/tcp (answering now)") {
			t.Errorf("port add = %q", out)
		}
		if got, err := e.get("http://127.0.0.1:18081/"); err != nil || got != hello {
			t.Errorf("added port 18081 = %q, %v", got, err)
		}
		e.must("vm", "port", "rm", "pub", "18081")
		if got, err := e.get("http://127.0.0.1:18081/"); err == nil {
			t.Errorf("removed port 18081 still answers %q", got)
		}
		e.fails(1, "VM pub publishes no host port 18081/tcp", "vm", "port", "rm", "pub", "18081")
	})

	t.Run("a port on every address answers the host, not the guests", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "port", "add", "pub", "0.0.0.0:18082:8080")
		gw := strings.TrimSuffix(vm.IP, ".2") + ".1"
		if got, err := e.get("http://" + gw + ":18082/"); err != nil || got != hello {
			t.Errorf("the host through its bridge address %s:18082 = %q, %v; want %q", gw, got, err, hello)
		}
		// A guest reaching the port through the host would get around
		// guest isolation: bangerd closes such connections at once.
		script := `exec 3<>/dev/tcp/` + gw + `/18082 || exit 0; printf 'GET / HTTP/1.0\r\n\r\n' >&3; timeout 5 cat <&3`
		if out, _, _ := e.banger(context.Background(), "vm", "ssh", "pub", "--", "bash", "-c", shq(script)); strings.Contains(out, "hello from") {
			t.Errorf("a guest reached a published port through the host: %q", out)
		}
		if out := e.ssh("pub", "bash", "-c", shq(`exec 3<>/dev/tcp/127.0.0.1/8080; printf 'GET / HTTP/1.0\r\n\r\n' >&3; timeout 5 cat <&3`)); !strings.Contains(out, hello) {
			t.Errorf("the same request inside the guest, to its own server: %q", out)
		}
		e.must("vm", "port", "rm", "pub", "0.0.0.0:18082")
	})

	t.Run("stop closes the ports; a grown /root keeps its files; start reopens them", func(t *testing.T) {
		e := e.with(t)
		e.fails(1, "/root grows only while the VM is stopped", "vm", "set", "--work-size", "24G", "pub")
		e.must("vm", "stop", "pub")
		refused(t, "after stop")
		if got := portsOf(e.vmJSON("pub")); got != "127.0.0.1:18080:8080/tcp(false) 127.0.0.1:15353:5353/udp(false)" {
			t.Errorf("ports of the stopped VM = %q", got)
		}
		e.fails(1, "/root only grows: pick --work-size 16G or more", "vm", "set", "--work-size", "8G", "pub")
		if size := virtualSize(t, work); size != 16<<30 {
			t.Errorf("a refused shrink changed the disk to %d bytes", size)
		}
		if out := e.must("vm", "set", "--work-size", "24G", "pub"); out != "pub: /root 24G\n" {
			t.Errorf("vm set --work-size 24G = %q", out)
		}
		if v := e.vmJSON("pub"); v.WorkSizeBytes != 24<<30 {
			t.Errorf("work size after the grow = %d, want 24G", v.WorkSizeBytes)
		}
		e.must("vm", "start", "pub")
		if size, used := e.guestDF("pub"); size < 22<<30 || size > 24<<30 || used < 1<<30 {
			t.Errorf("df /root after the grow = %d size, %d used; want about 24G with the 1 GiB kept", size, used)
		}
		if got := strings.Fields(e.ssh("pub", "sha256sum", "/root/marker"))[0]; got != marker {
			t.Errorf("/root/marker after the grow: sha256 %s, want %s", got, marker)
		}
		if got := strings.TrimSpace(e.ssh("pub", "stat", "-c", "%s", "/root/big")); got != "1073741824" {
			t.Errorf("/root/big after the grow is %s bytes", got)
		}
		e.startGuestServer("pub", server)
		answers(t, "after start")
	})

	t.Run("a killed bangerd's ports come back with the next", func(t *testing.T) {
		e := e.with(t)
		e.killDaemon()
		refused(t, "with bangerd killed")
		e.startDaemon()
		// bangerd answers its socket before it has reconciled the host.
		e.waitAnswer("http://127.0.0.1:18080/", 30*time.Second)
		answers(t, "after bangerd restarted")
		if got := portsOf(e.vmJSON("pub")); got != portsOf(vm) {
			t.Errorf("ports after the restart = %q, want %q", got, portsOf(vm))
		}
	})

	t.Run("delete leaves no forwarder and frees the ports", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "delete", "--force", "pub")
		refused(t, "after delete")
		e.holdPort("127.0.0.1:18080")
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Errorf("VM dir after delete: %v", err)
		}
	})
}

// publishedOpencode checks that the docker image's opencode server answers
// through 127.0.0.1:14096 with the VM's password, and 401 without.
func (e *env) publishedOpencode(pw, when string) {
	e.t.Helper()
	health := func(auth bool) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:14096/global/health", nil)
		if auth {
			req.SetBasicAuth("opencode", pw)
		}
		resp, err := e.nsHTTP().Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := health(true); err != nil || code != 200 || !strings.Contains(body, `"healthy":true`) {
		e.t.Errorf("%s: opencode through 127.0.0.1:14096 = %d %q %v, want healthy", when, code, body, err)
	} else {
		e.t.Logf("%s: opencode through 127.0.0.1:14096: %s", when, strings.TrimSpace(body))
	}
	if code, _, err := health(false); err != nil || code != http.StatusUnauthorized {
		e.t.Errorf("%s: opencode through 127.0.0.1:14096 without the password = %d, %v; want 401", when, code, err)
	}
}

// TestPortsAsUser publishes a port and grows /root with an unprivileged
// bangerd (an ordinary user with exactly banger's sudoers rule): the
// relay needs no root; a port below 1024 is refused clearly.
func TestPortsAsUser(t *testing.T) {
	openTUN(t)
	u := newTestUser(t, vmSudoers)
	e := newEnvWith(t, envOpts{user: u})
	server := guestServer(t)
	// The user's own copy of the server (the test's temp dir is root's).
	own := filepath.Join(e.root, "guestserver")
	b, err := os.ReadFile(server)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(own, b, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(own, u.UID, u.GID)
	if st, err := os.Stat(fmt.Sprintf("/proc/%d", e.pid)); err != nil || int(st.Sys().(*syscall.Stat_t).Uid) != u.UID {
		t.Fatalf("bangerd (pid %d) does not run as %s: %v", e.pid, u.Name, err)
	}
	vm := e.create("upub", "--image", "minimal", "--work-size", "4G", "-p", "18080:8080")
	t.Logf("%s's bangerd (pid %d) created upub at %s", u.Name, e.pid, vm.IP)
	if vm.WorkSizeBytes != 4<<30 {
		t.Errorf("--work-size 4G gave %d", vm.WorkSizeBytes)
	}
	e.startGuestServer("upub", own)
	if got, err := e.get("http://127.0.0.1:18080/"); err != nil || got != "hello from upub\n" {
		t.Errorf("as %s: http://127.0.0.1:18080/ = %q, %v", u.Name, got, err)
	}
	e.fails(1, "bangerd may not listen on ports below 1024 as an ordinary user: pick a host port of 1024 or more", "vm", "port", "add", "upub", "80:8080")
	e.must("vm", "stop", "upub")
	e.must("vm", "set", "--work-size", "6G", "upub")
	e.must("vm", "start", "upub")
	if size, _ := e.guestDF("upub"); size < 5<<30 || size > 6<<30 {
		t.Errorf("as %s: df /root after the grow = %d, want about 6G", u.Name, size)
	}
	e.startGuestServer("upub", own)
	if got, err := e.get("http://127.0.0.1:18080/"); err != nil || got != "hello from upub\n" {
		t.Errorf("as %s after stop, grow and start: %q, %v", u.Name, got, err)
	}
	e.must("vm", "delete", "--force", "upub")
	if ls := e.listeners(); strings.Contains(ls, ":18080") {
		t.Errorf("as %s: a listener left after delete:\n%s", u.Name, ls)
	}
}
