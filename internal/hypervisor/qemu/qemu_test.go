package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
)

func testSpec() hypervisor.Spec {
	return hypervisor.Spec{
		ID:         "vm1",
		Dir:        "/run/banger/vm1",
		Kernel:     "/b/vmlinux",
		Initrd:     "/b/initrd.img",
		Cmdline:    "console=ttyS0 root=/dev/vda rw",
		VCPUs:      2,
		MemoryMiB:  1024,
		Disks:      []hypervisor.Disk{{ID: "root", Path: "/var/lib/banger/vm1/root.ext4", Root: true}},
		NICs:       []hypervisor.NIC{{ID: "net0", TAP: "tap-vm1", MAC: "02:fc:00:00:00:01"}},
		ConsoleLog: "/var/lib/banger/vm1/console.log",
		AgentCID:   7,
	}
}

// hasSeq reports whether want occurs in argv as consecutive elements.
func hasSeq(argv, want []string) bool {
	for i := 0; i+len(want) <= len(argv); i++ {
		if slices.Equal(argv[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

func TestCommand(t *testing.T) {
	no := func() bool { return false }
	yes := func() bool { return true }
	roSpec := testSpec()
	roSpec.Disks = append(roSpec.Disks, hypervisor.Disk{ID: "seed", Path: "/b/seed,1.ext4", ReadOnly: true})
	shareSpec := testSpec()
	shareSpec.Shares = []hypervisor.Share{{Tag: "banger0", Socket: "/run/banger/vm1/fs0.sock"}, {Tag: "banger1", Socket: "/run/a,b/fs1.sock"}}
	tests := []struct {
		name string
		b    *Backend
		spec hypervisor.Spec
		want [][]string
		not  []string
	}{
		{
			name: "tcg serial",
			b:    &Backend{Accel: "tcg", vsock: no},
			spec: testSpec(),
			want: [][]string{
				{"qemu-system-x86_64", "-name", "vm1", "-accel", "tcg", "-M", "microvm,pit=on,pic=on,rtc=on,acpi=on,auto-kernel-cmdline=off", "-cpu", "Nehalem", "-m", "1024", "-smp", "2"},
				{"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-device", "i8042"},
				{"-kernel", "/b/vmlinux", "-initrd", "/b/initrd.img", "-append", "console=ttyS0 root=/dev/vda rw tsc_early_khz=2000000 mitigations=off"},
				{"-chardev", "file,id=con,path=/var/lib/banger/vm1/console.log,append=on", "-serial", "chardev:con"},
				{"-drive", "id=root,file=/var/lib/banger/vm1/root.ext4,format=raw,if=none,cache=writeback,aio=threads,discard=unmap", "-device", "virtio-blk-device,drive=root"},
				{"-netdev", "tap,id=net0,ifname=tap-vm1,script=no,downscript=no", "-device", "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:01"},
				{"-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-device,rng=rng0"},
				{"-device", "virtio-serial-device", "-chardev", "socket,id=agent,path=/run/banger/vm1/agent.sock,server=on,wait=off", "-device", "virtserialport,chardev=agent,name=org.banger.agent"},
				{"-chardev", "socket,id=qmp,path=/run/banger/vm1/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control"},
				{"-D", "/run/banger/vm1/qemu.log", "-daemonize", "-pidfile", "/run/banger/vm1/qemu.pid"},
			},
			not: []string{"host", "vhost-vsock-device,guest-cid=7", "memory-backend-memfd,id=microvm.ram,size=1024M,share=on", "virtio-mmio.force-legacy=false"},
		},
		{
			name: "kvm vsock",
			b:    &Backend{Accel: "kvm", Binary: "/opt/qemu", vsock: yes},
			spec: testSpec(),
			want: [][]string{
				{"/opt/qemu", "-name", "vm1", "-accel", "kvm"},
				{"-cpu", "host"},
				{"-append", "console=ttyS0 root=/dev/vda rw"},
				{"-device", "vhost-vsock-device,guest-cid=7"},
			},
			not: []string{"virtio-serial-device", "virtserialport,chardev=agent,name=org.banger.agent"},
		},
		{
			name: "shared folders: shared RAM and a vhost-user-fs device each",
			b:    &Backend{Accel: "tcg", vsock: no},
			spec: shareSpec,
			want: [][]string{
				{"-M", "microvm,pit=on,pic=on,rtc=on,acpi=on,auto-kernel-cmdline=off,memory-backend=microvm.ram"},
				{"-global", "virtio-mmio.force-legacy=false", "-object", "memory-backend-memfd,id=microvm.ram,size=1024M,share=on"},
				{"-chardev", "socket,id=fs0,path=/run/banger/vm1/fs0.sock", "-device", "vhost-user-fs-device,chardev=fs0,tag=banger0,queue-size=1024"},
				{"-chardev", "socket,id=fs1,path=/run/a,,b/fs1.sock", "-device", "vhost-user-fs-device,chardev=fs1,tag=banger1,queue-size=1024"},
			},
		},
		{
			name: "read-only disk with a comma",
			b:    &Backend{Accel: "tcg", vsock: no},
			spec: roSpec,
			want: [][]string{
				{"-device", "virtio-blk-device,drive=root", "-drive", "id=seed,file=/b/seed,,1.ext4,format=raw,if=none,cache=writeback,aio=threads,readonly=on", "-device", "virtio-blk-device,drive=seed"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.b.Command(tt.spec)
			for _, w := range tt.want {
				if !hasSeq(got, w) {
					t.Errorf("Command() = %q, want it to contain %q", got, w)
				}
			}
			for _, n := range tt.not {
				if slices.Contains(got, n) {
					t.Errorf("Command() = %q, want no %q", got, n)
				}
			}
		})
	}
}

func TestCommandDefaults(t *testing.T) {
	spec := testSpec()
	spec.Initrd = ""
	spec.ConsoleLog = ""
	got := (&Backend{Accel: "tcg", vsock: func() bool { return false }}).Command(spec)
	if slices.Contains(got, "-initrd") {
		t.Errorf("Command(no initrd) = %q, want no -initrd", got)
	}
	if want := "file,id=con,path=/run/banger/vm1/console.log,append=on"; !slices.Contains(got, want) {
		t.Errorf("Command(no console log) = %q, want %q", got, want)
	}
}

func TestValidate(t *testing.T) {
	long := testSpec()
	long.Dir = "/" + strings.Repeat("d", 100)
	badDisk := testSpec()
	badDisk.Disks[0].ID = "1root"
	noTap := testSpec()
	noTap.NICs[0].TAP = ""
	rel := testSpec()
	rel.Dir = "run/vm1"
	noMem := testSpec()
	noMem.MemoryMiB = 0
	badTag := testSpec()
	badTag.Shares = []hypervisor.Share{{Tag: "ban ger", Socket: "/run/fs0.sock"}}
	twoTags := testSpec()
	twoTags.Shares = []hypervisor.Share{{Tag: "banger0", Socket: "/run/fs0.sock"}, {Tag: "banger0", Socket: "/run/fs1.sock"}}
	relSocket := testSpec()
	relSocket.Shares = []hypervisor.Share{{Tag: "banger0", Socket: "fs0.sock"}}
	tests := []struct {
		name string
		spec hypervisor.Spec
		want string // substring of the error; "" means valid
	}{
		{"valid", testSpec(), ""},
		{"long dir", long, "longer than 107 bytes"},
		{"bad disk id", badDisk, `disk id "1root"`},
		{"no tap", noTap, "needs a tap and a mac"},
		{"relative dir", rel, "not absolute"},
		{"no memory", noMem, "must be positive"},
		{"bad share tag", badTag, `share tag "ban ger"`},
		{"share tag twice", twoTags, "share tag banger0 is used twice"},
		{"relative share socket", relSocket, `socket "fs0.sock" must be an absolute path`},
	}
	for _, tt := range tests {
		err := validate(tt.spec)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("validate(%s) = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("validate(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestIsOurs(t *testing.T) {
	spec := testSpec()
	argv := (&Backend{Accel: "tcg"}).Command(spec)
	other := spec
	other.ID = "vm2"
	otherDir := spec
	otherDir.Dir = "/run/banger/vm2"
	tests := []struct {
		name string
		args []string
		spec hypervisor.Spec
		want bool
	}{
		{"same", argv, spec, true},
		{"other id", argv, other, false},
		{"other dir", argv, otherDir, false},
		{"not qemu", []string{"sleep", "100"}, spec, false},
	}
	for _, tt := range tests {
		if got := isOurs(tt.args, tt.spec); got != tt.want {
			t.Errorf("isOurs(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAvailable(t *testing.T) {
	err := (&Backend{Binary: "/nonexistent/qemu"}).Available()
	if err == nil || !strings.Contains(err.Error(), "apt-get install qemu-system-x86") {
		t.Errorf("Available(missing binary) = %v, want an error naming apt-get install qemu-system-x86", err)
	}
}

// fakeQMP serves one QMP session on a unix socket: it greets, then answers
// each command with reply(command), which returns the lines to send.
func fakeQMP(t *testing.T, reply func(cmd string, id json.RawMessage) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}` + "\r\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var req struct {
						Execute string          `json:"execute"`
						ID      json.RawMessage `json:"id"`
					}
					if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
						return
					}
					lines := reply(req.Execute, req.ID)
					if lines == nil {
						return // hang up
					}
					for _, line := range lines {
						c.Write([]byte(line + "\r\n"))
					}
				}
			}()
		}
	}()
	return path
}

func TestQMP(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	path := fakeQMP(t, func(cmd string, id json.RawMessage) []string {
		mu.Lock()
		seen = append(seen, cmd)
		mu.Unlock()
		ok := `{"return": {}, "id": ` + string(id) + `}`
		switch cmd {
		case "qmp_capabilities":
			return []string{ok}
		case "query-status":
			return []string{
				`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 0}}`,
				`{"return": {"status": "stale"}, "id": "not-ours"}`,
				`{"return": {"status": "running", "singlestep": false, "running": true}, "id": ` + string(id) + `}`,
			}
		case "system_powerdown":
			return []string{`{"id": ` + string(id) + `, "error": {"class": "GenericError", "desc": "no power button"}}`}
		case "quit":
			return nil
		}
		return []string{`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}, "id": ` + string(id) + `}`}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, path)
	if err != nil {
		t.Fatalf("dialQMP() = %v, want nil", err)
	}
	defer c.Close()

	st, err := c.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Errorf("QueryStatus() = %+v, %v, want running, nil", st, err)
	}
	if !slices.Equal(c.events, []string{"RTC_CHANGE"}) {
		t.Errorf("events after QueryStatus = %q, want [RTC_CHANGE]", c.events)
	}

	err = c.SystemPowerdown(ctx)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "system_powerdown" {
		t.Errorf("SystemPowerdown() = %v, want a GenericError QMPError", err)
	}

	err = c.Execute(ctx, "no-such-command", nil, nil)
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("Execute(no-such-command) = %v, want a CommandNotFound QMPError", err)
	}

	if err := c.Quit(ctx); err != nil {
		t.Errorf("Quit() with the connection closed by qemu = %v, want nil", err)
	}
	want := []string{"qmp_capabilities", "query-status", "system_powerdown", "no-such-command", "quit"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("commands seen by the server = %q, want %q", seen, want)
	}
}

func TestQMPTimeout(t *testing.T) {
	path := fakeQMP(t, func(cmd string, id json.RawMessage) []string {
		if cmd == "qmp_capabilities" {
			return []string{`{"return": {}, "id": ` + string(id) + `}`}
		}
		return []string{} // never answer
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	start := time.Now()
	_, err = c.QueryStatus(short)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("QueryStatus(unanswered) = %v after %v, want a timeout error after about 200ms", err, time.Since(start))
	}
}

func TestQMPNotAGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("{\"hello\": 1}\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, path); err == nil || !strings.Contains(err.Error(), "not a qmp greeting") {
		t.Errorf("dialQMP(non-qmp server) = %v, want a not-a-greeting error", err)
	}
}

func TestAttachNotRunning(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec()
	spec.Dir = dir
	b := &Backend{}
	ctx := context.Background()
	if _, err := b.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach(no pid file) = %v, want ErrNotRunning", err)
	}
	// A live process that is not our qemu: this test binary.
	os.WriteFile(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if _, err := b.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach(pid of another process) = %v, want ErrNotRunning", err)
	}
	os.WriteFile(filepath.Join(dir, PIDFile), []byte("garbage"), 0o644)
	if _, err := b.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach(garbage pid file) = %v, want ErrNotRunning", err)
	}
}
