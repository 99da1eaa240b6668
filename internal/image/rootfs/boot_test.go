package rootfs

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/console"
	"github.com/banger/banger/internal/hypervisor/qemu"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/image/initramfs"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// TestBootImages boots both images under QEMU TCG inside a throwaway network
// namespace and checks the guest contract: agent health over virtio-serial,
// SSH with the pinned host key and the bundle key, network from ip=, /root
// from the work-seed, and shutdown through the agent.
func TestBootImages(t *testing.T) {
	needImageTools(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
	}
	ctx := context.Background()
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	kp, err := kernel.Fetch(ctx, runner.Default, cache)
	if err != nil {
		t.Fatalf("fetching kernel: %v", err)
	}
	vmlinux := filepath.Join(dir, "vmlinux")
	if err := kernel.ExtractVmlinuxFile(kp.Vmlinuz, vmlinux); err != nil {
		t.Fatal(err)
	}
	initBin := filepath.Join(dir, "banger-init")
	vmtest.GoBuild(t, initBin, "github.com/banger/banger/cmd/banger-init")
	mods, err := kernel.LoadOrder(kp.ModulesDir, initramfs.DefaultModules())
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initrd.img")
	if err := initramfs.Build(initrd, initramfs.Spec{Init: initBin, KernelVersion: kp.Version, Modules: mods}); err != nil {
		t.Fatal(err)
	}
	agentBin := buildAgent(t)

	keyPath := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyPath).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, _ := os.ReadFile(keyPath + ".pub")
	priv, _ := os.ReadFile(keyPath)
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "work-seed.ext4")
	if err := workseed.Build(ctx, runner.Default, pub, seed); err != nil {
		t.Fatal(err)
	}

	for _, kind := range []Kind{KindMinimal, KindDocker} {
		t.Run(string(kind), func(t *testing.T) {
			vmdir := t.TempDir()
			rootImg := filepath.Join(vmdir, "rootfs.ext4")
			opts := Options{Kind: kind, Agent: agentBin, CacheDir: cache, Modules: filepath.Dir(kp.ModulesDir)}
			if err := Build(ctx, runner.Default, opts, rootImg); err != nil {
				t.Fatal(err)
			}
			if kind == KindDocker {
				// What bangerd writes at create: the opencode unit does not
				// start without it.
				env := []byte("OPENCODE_SERVER_PASSWORD=" + testOpencodePassword + "\n")
				if err := ext4.PutFile(ctx, runner.Default, rootImg, opencode.EnvFile, env, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			work := filepath.Join(vmdir, "work.ext4")
			if err := copySparse(ctx, runner.Default, seed, work); err != nil {
				t.Fatal(err)
			}
			bootAndCheck(t, kind, vmlinux, initrd, rootImg, work, signer)
		})
	}
}

func bootAndCheck(t *testing.T, kind Kind, vmlinux, initrd, rootImg, work string, signer ssh.Signer) {
	ns := vmtest.NewNS(t)
	for _, args := range [][]string{
		{"tuntap", "add", "tap0", "mode", "tap"},
		{"addr", "add", "172.30.0.1/24", "dev", "tap0"},
		{"link", "set", "tap0", "up"},
	} {
		if out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	vmdir := filepath.Dir(rootImg)
	consoleLog := filepath.Join(vmdir, "console.log")
	agentSock := filepath.Join(vmdir, "agent.sock")
	cmdline := "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw " +
		"ip=172.30.0.2::172.30.0.1:255.255.255.0:smoke-" + string(kind) + ":eth0:off:172.30.0.1 tsc_early_khz=2000000"
	qctx, qcancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer qcancel()
	qemuArgs := []string{
		"-accel", "tcg", "-M", "microvm,pit=on,pic=on,rtc=on", "-m", "1024", "-smp", "2",
		// opencode (a Bun binary, baseline build) needs x86-64-v2 (SSE4.2,
		// POPCNT); QEMU's default TCG CPU, qemu64, lacks it and the binary
		// dies of SIGILL. "-cpu max" hangs the kernel's TSC calibration.
		"-cpu", qemu.TCGCPU,
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-serial", "file:" + consoleLog,
		"-kernel", vmlinux, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=root,file=" + rootImg + ",format=raw,if=none", "-device", "virtio-blk-device,drive=root",
		"-drive", "id=work,file=" + work + ",format=raw,if=none", "-device", "virtio-blk-device,drive=work",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0,mac=02:00:ac:1e:00:02",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + agentSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=org.banger.agent",
		"-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng",
	}
	var stderr bytes.Buffer
	type run struct {
		cmd    *exec.Cmd
		exited chan struct{}
		err    error
	}
	launch := func() *run {
		cmd := ns.Command(qctx, "qemu-system-x86_64", qemuArgs...)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting qemu: %v", err)
		}
		q := &run{cmd: cmd, exited: make(chan struct{})}
		go func() {
			q.err = cmd.Wait()
			close(q.exited)
		}()
		return q
	}
	stop := func(q *run) {
		select {
		case <-q.exited:
		default:
			q.cmd.Process.Kill()
			<-q.exited
		}
	}
	// A kernel that stops in early boot (TCG SMP guests sometimes do) is
	// booted once more, as bangerd does.
	watch := console.New(consoleLog, cmdline, console.DefaultQuiet, time.Now())
	start := time.Now()
	q := launch()
	dumpConsole := func() {
		b, _ := os.ReadFile(consoleLog)
		t.Logf("qemu stderr: %s\nconsole:\n%s", stderr.String(), b)
	}
	defer func() { stop(q) }()

	client := &agent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", agentSock)
	}}
	var h *agent.Health
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		h, _ = client.Health(ctx)
		cancel()
		if h != nil && len(h.SSHHostKeys) > 0 {
			break
		}
		if watch != nil && watch.Stalled(time.Now()) {
			dumpConsole()
			t.Logf("%s: the guest kernel stopped in early boot; booting it again", kind)
			stop(q)
			watch = nil
			q = launch()
			deadline = time.Now().Add(3 * time.Minute)
			continue
		}
		select {
		case <-q.exited:
			dumpConsole()
			t.Fatalf("qemu exited before the agent answered: %v", q.err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if h == nil || len(h.SSHHostKeys) == 0 {
		dumpConsole()
		t.Fatalf("agent health = %+v, want ok with host keys", h)
	}
	healthAt := time.Since(start)
	t.Logf("%s: agent healthy after %v: %+v", kind, healthAt.Round(time.Millisecond), h)
	if h.Hostname != "smoke-"+string(kind) {
		t.Errorf("health hostname = %q, want %q", h.Hostname, "smoke-"+string(kind))
	}
	pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(h.SSHHostKeys[0]))
	if err != nil {
		t.Fatalf("parsing host key %q: %v", h.SSHHostKeys[0], err)
	}

	var out string
	for time.Now().Before(deadline) {
		out, err = ns.SSH(context.Background(), "172.30.0.2:22", signer, pinned, sshScript(kind))
		if err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		dumpConsole()
		t.Fatalf("ssh: %v", err)
	}
	t.Logf("%s: ssh command done after %v:\n%s", kind, time.Since(start).Round(time.Millisecond), out)
	for _, want := range []string{"host=smoke-" + string(kind), "inet 172.30.0.2/24", "default via 172.30.0.1", "nameserver 172.30.0.1", "root-mounted", "authorized_keys"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest report lacks %q", want)
		}
	}
	if kind == KindDocker {
		for _, want := range []string{"docker=active", "container-ran", "mise=" + MiseVersion, "opencode=" + OpencodeVersion,
			"mise-shell=bash", "opencode-listening", `opencode-health={"healthy":true`, "opencode-without-password=401"} {
			if !strings.Contains(out, want) {
				t.Errorf("guest report lacks %q", want)
			}
		}
	}

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	stopAt := time.Now()
	if err := client.Shutdown(sctx); err != nil {
		dumpConsole()
		t.Fatalf("agent shutdown: %v", err)
	}
	select {
	case <-q.exited:
		t.Logf("%s: qemu exited %v after the shutdown request", kind, time.Since(stopAt).Round(time.Millisecond))
	case <-time.After(60 * time.Second):
		dumpConsole()
		t.Fatalf("qemu still running 60s after the shutdown request")
	}
	if b, err := vmtest.Command("e2fsck", "-fn", work).CombinedOutput(); err != nil {
		t.Errorf("work disk not clean after shutdown: e2fsck -fn: %v: %s", err, b)
	}
	if testing.Verbose() {
		b, _ := os.ReadFile(consoleLog)
		t.Logf("console tail:\n%s", tail(string(b), 40))
	}
}

// testOpencodePassword is the opencode server's password in the boot test.
const testOpencodePassword = "boot-test-password"

func sshScript(kind Kind) string {
	s := `echo host=$(hostname); ip -4 addr show eth0; ip route; cat /etc/resolv.conf; ` +
		`grep -q ' /root ' /proc/mounts && echo root-mounted; ls -a /root/.ssh; cat /proc/uptime; `
	if kind == KindDocker {
		s += `for i in $(seq 1 120); do systemctl is-active -q docker && break; sleep 1; done; echo docker=$(systemctl is-active docker); ` +
			`systemctl is-system-running; systemd-analyze 2>/dev/null; systemctl --failed --no-legend; docker info --format '{{.ServerVersion}} {{.Driver}}' 2>&1; ` +
			`cd /usr/local/bin && tar c banger-vsock-agent | docker import - banger-smoke >/dev/null && docker run --rm banger-smoke /banger-vsock-agent help | head -1 && echo container-ran; ` +
			// opencode's server comes up after SSH, at Nice=10; under TCG it takes a while.
			`echo guest-avx2=$(grep -cw avx2 /proc/cpuinfo); echo mise=$(mise --version 2>&1); echo opencode=$(opencode --version 2>&1); bash -ic 'echo mise-shell=$MISE_SHELL' 2>/dev/null; ` +
			// opencode's first answers can take minutes when the host is busy
			// (CI runs other VM tests beside this one), so poll until a deadline.
			`end=$(( $(cut -d. -f1 /proc/uptime) + 420 )); ` +
			`while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do h=$(curl -s -m 20 -u opencode:` + testOpencodePassword + ` http://127.0.0.1:4096/global/health) && [ -n "$h" ] && break; sleep 1; done; ` +
			`echo opencode-without-password=$(curl -s -m 20 -o /dev/null -w '%{http_code}' http://127.0.0.1:4096/global/health); ` +
			`ss -Hltn 'sport = :4096' | grep -q . && echo opencode-listening; ` +
			`echo opencode-health=$h at uptime $(cut -d' ' -f1 /proc/uptime); ` +
			`systemctl show opencode-server -p ActiveEnterTimestampMonotonic -p NRestarts -p MainPID; ` +
			`journalctl -b -u opencode-server -o short-monotonic --no-pager | tail -5; free -m; ` +
			`systemd-analyze blame --no-pager | head -25; systemd-analyze critical-chain --no-pager ssh.service banger-agent.service; journalctl -b -u docker -u containerd -u docker.socket --no-pager | tail -40`
	} else {
		s += `ps -N --ppid 2 -p 2 -o pid,comm`
	}
	return s
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
