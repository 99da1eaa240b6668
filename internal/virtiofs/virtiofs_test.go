package virtiofs

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/vmtest"
)

// TestMain lets the test binary be the helper, as bangerd is.
func TestMain(m *testing.M) {
	if IsHelper() {
		os.Exit(HelperMain())
	}
	os.Exit(m.Run())
}

func TestFindRange(t *testing.T) {
	file := filepath.Join(t.TempDir(), "subgid")
	os.WriteFile(file, []byte("# comment\nbad line\nalice:100000:65536\nbob:x:5\n1001:200000:1000\nbob:300000:70000\n"), 0o600)
	for _, tc := range []struct {
		names        []string
		start, count int
		ok           bool
	}{
		{[]string{"alice"}, 100000, 65536, true},
		{[]string{"1001", "carol"}, 200000, 1000, true},
		{[]string{"bob"}, 300000, 70000, true}, // the malformed line is skipped
		{[]string{"nobody"}, 0, 0, false},
	} {
		start, count, err := findRange(file, tc.names)
		if start != tc.start || count != tc.count || (err == nil) != tc.ok {
			t.Errorf("findRange(%v) = %d, %d, %v, want %d, %d, ok=%t", tc.names, start, count, err, tc.start, tc.count, tc.ok)
		}
	}
}

func TestArgv(t *testing.T) {
	sh := Share{Source: "/home/dev/src", Socket: "/run/banger/vms/abc/fs0.sock"}
	want := []string{"virtiofsd:/run/banger/vms/abc/fs0.sock", "--fd=3", "-o", "source=/home/dev/src", "-o", "cache=auto", "--rlimit-nofile=0"}
	if got := sh.Argv(); !reflect.DeepEqual(got, want) {
		t.Errorf("Argv() = %q, want %q", got, want)
	}
	odd := Share{Source: `/home/dev/a,b\c`, Socket: "/run/fs0.sock"}
	if got := odd.Argv()[3]; got != `source=/home/dev/a\,b\\c` {
		t.Errorf("Argv()[3] of %s = %s, want the comma and backslash escaped", odd.Source, got)
	}
	if got := sh.LogFile(); got != "/run/banger/vms/abc/fs0.log" {
		t.Errorf("LogFile() = %q, want /run/banger/vms/abc/fs0.log", got)
	}
}

// serveNeeds are what TestServe needs: virtiofsd, and what Check asks
// of this user.
func serveNeeds() vmtest.Need {
	return func() error { return (&Server{}).Check() }
}

// TestServe starts real virtiofsd processes for a read-only and a
// read-write folder, connects to them as QEMU would (which makes
// virtiofsd sandbox itself), checks their sandboxes (rooted in the folder,
// a write through the read-only one refused by the kernel), adopts them as
// a restarted bangerd would and stops them, leaving nothing.
func TestServe(t *testing.T) {
	vmtest.RequireHost(t, "serving folders with virtiofsd", serveNeeds())
	dir := ownedTempDir(t)
	ro, rw := filepath.Join(dir, "read,only"), filepath.Join(dir, "rw")
	for _, d := range []string{ro, rw} {
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "hello"), []byte("hi\n"), 0o644)
		if os.Geteuid() == 0 {
			os.Chown(d, 65534, 65534)
		}
	}
	run := t.TempDir()
	s := &Server{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shares := []Share{
		{Source: ro, ReadOnly: true, Socket: filepath.Join(run, "fs0.sock")},
		{Source: rw, Socket: filepath.Join(run, "fs1.sock")},
	}
	var procs []*proc.Process
	for _, sh := range shares {
		p, err := s.Start(ctx, sh)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop(sh)
		procs = append(procs, p)
		// virtiofsd sandboxes itself once QEMU connects.
		c, err := net.Dial("unix", sh.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for i, sh := range shares {
		pid := procs[i].PID()
		args, _ := proc.Cmdline(pid)
		if len(args) == 0 || args[0] != sh.argv0() {
			t.Errorf("virtiofsd %d command line = %q, want it to start with %q", i, args, sh.argv0())
		}
		wantUID := strconv.Itoa(os.Geteuid())
		if os.Geteuid() == 0 {
			wantUID = "65534"
		}
		if m, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/uid_map"); strings.Join(strings.Fields(string(m)), " ") != "0 "+wantUID+" 1" {
			t.Errorf("uid_map of virtiofsd %d = %q, want 0 %s 1", i, m, wantUID)
		}
		// The host's own view of the folder is unchanged.
		if got := mountOptions(t, "self", sh.Source); got != "" {
			t.Errorf("the host sees a mount on %s (%s): the helper's mounts leaked", sh.Source, got)
		}
		var sandbox int
		for deadline := time.Now().Add(10 * time.Second); sandbox == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if c := children(pid); len(c) > 0 {
				sandbox = c[0]
			}
		}
		if sandbox == 0 {
			t.Fatalf("virtiofsd %d has no sandboxed child after a connection", i)
		}
		// The sandbox's root is the folder, mounted read-only or not.
		opts := mountOptions(t, strconv.Itoa(sandbox), "/")
		if want := "rw"; sh.ReadOnly && !strings.HasPrefix(opts, "ro,") || !sh.ReadOnly && !strings.HasPrefix(opts, want+",") {
			t.Errorf("the sandbox root of virtiofsd %d has options %q, want read-only=%t", i, opts, sh.ReadOnly)
		}
		// A write through that mount: the kernel refuses it on the
		// read-only one.
		err := os.WriteFile("/proc/"+strconv.Itoa(sandbox)+"/root/new", []byte("x"), 0o644)
		if sh.ReadOnly && !errors.Is(err, syscall.EROFS) {
			t.Errorf("writing through the read-only sandbox = %v, want EROFS", err)
		}
		if !sh.ReadOnly && err != nil {
			t.Errorf("writing through the read-write sandbox: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(rw, "new")); err != nil {
		t.Errorf("the file written through the read-write sandbox: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
		t.Errorf("a file appeared in the read-only folder")
	}

	// A second server adopts them and stops them: nothing is left.
	all := map[int]bool{}
	for _, p := range procs {
		all[p.PID()] = true
		for _, c := range children(p.PID()) {
			all[c] = true
		}
	}
	other := &Server{}
	for _, sh := range shares {
		p, err := other.Adopt(sh)
		if err != nil {
			t.Fatalf("Adopt(%s) = %v", sh.Socket, err)
		}
		p.Close()
		if err := other.Stop(sh); err != nil {
			t.Fatal(err)
		}
		if err := other.Stop(sh); err != nil {
			t.Errorf("a second Stop = %v, want nil", err)
		}
		for _, f := range []string{sh.Socket, sh.pidFile()} {
			if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s is left after Stop", f)
			}
		}
		if _, err := other.Adopt(sh); !errors.Is(err, hypervisor.ErrNotRunning) {
			t.Errorf("Adopt after Stop = %v, want ErrNotRunning", err)
		}
	}
	for pid := range all {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/cmdline"); err != nil || zombie(pid) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("pid %d is left after Stop", pid)
				break
			}
		}
	}
}

// TestStartRefuses checks that a failed start says why and leaves no
// process, socket or pid file.
func TestStartRefuses(t *testing.T) {
	vmtest.RequireHost(t, "serving folders with virtiofsd", serveNeeds())
	folder := ownedTempDir(t)
	for _, tc := range []struct {
		name, source, binary, want string
	}{
		{"missing virtiofsd", folder, "/nonexistent/virtiofsd", "/nonexistent/virtiofsd"},
		{"missing folder", filepath.Join(folder, "gone"), "", filepath.Join(folder, "gone")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sh := Share{Source: tc.source, Socket: filepath.Join(t.TempDir(), "fs0.sock")}
			_, err := (&Server{Binary: tc.binary}).Start(context.Background(), sh)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start() = %v, want an error naming %s", err, tc.want)
			}
			for _, f := range []string{sh.Socket, sh.pidFile()} {
				if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s is left after a failed Start", f)
				}
			}
			if out, _ := exec.Command("pgrep", "-f", "virtiofsd:"+sh.Socket).Output(); len(out) > 0 {
				t.Errorf("a process is left after a failed Start: %s", out)
			}
		})
	}
}

// ownedTempDir is a temporary folder for shares. Under root it belongs to
// nobody, whom a root bangerd's virtiofsd then acts as (never root), and
// its parent is open to them.
func ownedTempDir(t *testing.T) string {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		os.Chmod(filepath.Dir(dir), 0o755)
		os.Chmod(dir, 0o755)
		os.Chown(dir, 65534, 65534)
	}
	return dir
}

// mountOptions returns the mount options of the mount at target in pid's
// mount namespace, or "" when nothing is mounted there.
func mountOptions(t *testing.T, pid, target string) string {
	b, err := os.ReadFile("/proc/" + pid + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == target {
			return f[5]
		}
	}
	return ""
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}
