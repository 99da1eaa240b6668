package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/qemu"
	"github.com/banger/banger/internal/vmtest"
)

// bareBoot boots image straight from the bundle with qemu, with no daemon,
// inside ns, and returns the time from spawning qemu to the first accepted
// SSH login with the bundle key, plus the output of "uname -r" run over it.
func bareBoot(t testing.TB, ns *vmtest.NS, runtime, image string) (time.Duration, string) {
	t.Helper()
	return bareBootWith(t, ns, runtime, image, nil)
}

// bareBootWith is bareBoot with a hook: prepare, when not nil, may change
// the spec (and the VM's disk clones it names) before qemu starts.
func bareBootWith(t testing.TB, ns *vmtest.NS, runtime, image string, prepare func(*hypervisor.Spec)) (time.Duration, string) {
	t.Helper()
	b, err := bundle.Load(runtime)
	if err != nil {
		t.Fatal(err)
	}
	img, err := b.Image(image)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bgb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, c := range [][2]string{{img.Rootfs, "rootfs.ext4"}, {img.WorkSeed, "work.ext4"}} {
		if _, err := disk.Clone(b.Path(c[0]), filepath.Join(dir, c[1])); err != nil {
			t.Fatal(err)
		}
	}
	// One bridge and one TAP inside the namespace, as the daemon would make.
	for _, args := range [][]string{
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", "10.77.0.1/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
		{"tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"link", "set", "tap0", "master", "br0"},
		{"link", "set", "tap0", "up"},
	} {
		if out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	spec := hypervisor.Spec{
		ID:         "bare",
		Dir:        dir,
		Kernel:     b.Path(b.Kernel),
		Initrd:     b.Path(b.Initrd),
		Cmdline:    b.BootArgs + " root=/dev/vda rw ip=10.77.0.2::10.77.0.1:255.255.255.0:bare:eth0:off:10.77.0.1",
		VCPUs:      2,
		MemoryMiB:  1024,
		ConsoleLog: filepath.Join(dir, "console.log"),
		AgentCID:   3,
		Disks: []hypervisor.Disk{
			{ID: "root", Path: filepath.Join(dir, "rootfs.ext4"), Root: true},
			{ID: "work", Path: filepath.Join(dir, "work.ext4")},
		},
		NICs: []hypervisor.NIC{{ID: "eth0", TAP: "tap0", MAC: "02:00:0a:4d:00:02"}},
	}
	if prepare != nil {
		prepare(&spec)
	}
	be := &qemu.Backend{}
	argv := be.Command(spec)
	keyPEM, err := os.ReadFile(b.Path(b.SSHKey))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// A measurement inside a namespace this test made; banger itself pins
		// host keys reported by the guest agent.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	}

	start := time.Now()
	cmd := ns.Command(context.Background(), argv[0], argv[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("starting qemu %v: %v: %s", argv, err, out)
	}
	defer killPidfile(filepath.Join(dir, "qemu.pid"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for {
		// Short dial timeouts: while the guest has no network yet, a connect
		// waits for ARP, and a long timeout would hide when sshd came up.
		client, err := sshDial(ctx, ns, "10.77.0.2:22", cfg, 300*time.Millisecond)
		if err == nil {
			d := time.Since(start)
			sess, err := client.NewSession()
			if err != nil {
				// An sshd still starting can take a login and drop it;
				// the first session that opens counts.
				client.Close()
				if ctx.Err() != nil {
					t.Fatalf("ssh session: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			defer client.Close()
			defer sess.Close()
			out, err := sess.CombinedOutput("uname -r")
			if err != nil {
				t.Fatalf("ssh uname -r: %v: %s", err, out)
			}
			return d, string(out)
		}
		if ctx.Err() != nil {
			console, _ := os.ReadFile(spec.ConsoleLog)
			t.Fatalf("bare boot of %s: no ssh: %v\nconsole:\n%s", image, err, tail(string(console), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sshDial opens an authenticated SSH connection from inside ns.
func sshDial(ctx context.Context, ns *vmtest.NS, addr string, cfg *ssh.ClientConfig, dialTimeout time.Duration) (*ssh.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := ns.Dial(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

func killPidfile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var pid int
	fmt.Sscan(strings.TrimSpace(string(b)), &pid)
	if pid > 0 {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}
}

// TestBareBoot boots the bundle's kernel, initramfs and minimal image under
// qemu -M microvm with no daemon, and runs a command over SSH with the
// bundle's key.
func TestBareBoot(t *testing.T) {
	_, runtime := requireVM(t)
	ns := vmtest.NewNS(t)
	d, out := bareBoot(t, ns, runtime, "minimal")
	b, _ := bundle.Load(runtime)
	if strings.TrimSpace(out) != b.KernelVersion {
		t.Errorf("uname -r in guest = %q, want %q", strings.TrimSpace(out), b.KernelVersion)
	}
	t.Logf("minimal image: spawn to SSH command in %v", d.Round(time.Millisecond))
}
