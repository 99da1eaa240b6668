package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// virtiofsds lists the virtiofsd processes (and their sandboxed children)
// serving the env's VMs: their argv[0] names their socket, under the env's
// runtime dir.
func (e *env) virtiofsds() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv0, _, _ := strings.Cut(string(b), "\x00")
		if strings.HasPrefix(argv0, "virtiofsd:"+e.root+"/") {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// try runs a command in the guest and returns its output and error.
func (e *env) try(name string, command ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, err := e.banger(ctx, append([]string{"vm", "ssh", name, "--"}, command...)...)
	return out + errOut, err
}

// shareFolders makes a read-write and a read-only host folder with a file
// each. Under a root bangerd the guest acts as a folder's owner, never as
// root, so the read-write one belongs to owner (and its parents are open).
func shareFolders(t *testing.T, parent string, owner int) (rw, ro string) {
	rw, ro = filepath.Join(parent, "rw"), filepath.Join(parent, "ro,docs")
	for _, d := range []string{rw, ro} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "hello"), []byte("from the host: "+filepath.Base(d)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if owner >= 0 {
		for _, p := range []string{rw, filepath.Join(rw, "hello")} {
			if err := os.Chown(p, owner, owner); err != nil {
				t.Fatal(err)
			}
		}
	}
	return rw, ro
}

// checkMounts proves the host folders of VM name: files cross both ways, a
// write into the read-only one is refused by the guest, and, after the
// guest's root remounts it read-write, by the host. Files the guest makes
// belong to owner on the host.
func (e *env) checkMounts(t *testing.T, name, rw, ro string, owner int, when string) {
	t.Helper()
	if got := e.ssh(name, "cat", "/root/rw/hello", "/srv/docs/hello"); got != "from the host: rw\nfrom the host: ro,docs\n" {
		t.Errorf("%s: the guest reads %q from its mounts, want the host's files", when, got)
	}
	info := e.ssh(name, "grep", "virtiofs", "/proc/self/mountinfo")
	for _, want := range []string{" /root/rw rw,nosuid,nodev", " /srv/docs ro,nosuid,nodev", "virtiofs banger0", "virtiofs banger1"} {
		if !strings.Contains(info, want) {
			t.Errorf("%s: guest mountinfo lacks %q:\n%s", when, want, info)
		}
	}
	// Guest to host.
	stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
	e.ssh(name, "sh", "-c", "'echo "+stamp+" > /root/rw/from-guest && mkdir -p /root/rw/sub && echo x > /root/rw/sub/f'")
	b, err := os.ReadFile(filepath.Join(rw, "from-guest"))
	if err != nil || string(b) != stamp+"\n" {
		t.Errorf("%s: the host reads %q, %v from the guest's file, want %s", when, b, err, stamp)
	}
	for _, p := range []string{filepath.Join(rw, "from-guest"), filepath.Join(rw, "sub")} {
		if fi, err := os.Stat(p); err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != owner {
			t.Errorf("%s: %s made by the guest: %v, %v; want it owned by uid %d", when, p, fi, err, owner)
		}
	}
	// Host to guest, while the VM runs.
	if err := os.WriteFile(filepath.Join(ro, "late"), []byte(stamp+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := e.ssh(name, "cat", "/srv/docs/late"); got != stamp+"\n" {
		t.Errorf("%s: the guest reads %q from a file the host just wrote, want %s", when, got, stamp)
	}
	// The guest refuses writes into the read-only folder...
	if out, err := e.try(name, "touch", "/srv/docs/nope"); err == nil || !strings.Contains(out, "Read-only file system") {
		t.Errorf("%s: touch in the read-only mount = %v %q, want Read-only file system", when, err, out)
	}
	// ...and so does the host, when the guest's root remounts it
	// read-write: virtiofsd's view of the folder is a read-only mount.
	e.ssh(name, "mount", "-o", "remount,rw", "/srv/docs")
	if out, err := e.try(name, "sh", "-c", "'echo x > /srv/docs/nope'"); err == nil || !strings.Contains(out, "Read-only file system") {
		t.Errorf("%s: a write after the guest remounted the read-only folder read-write = %v %q, want Read-only file system from the host", when, err, out)
	}
	e.ssh(name, "mount", "-o", "remount,ro", "/srv/docs")
	if _, err := os.Stat(filepath.Join(ro, "nope")); err == nil {
		t.Errorf("%s: the guest wrote into the read-only folder", when)
	}
}

// TestMounts proves host folders on real QEMU guests of a root bangerd:
// the minimal image (banger's PID 1) and the docker image (systemd) mount
// them at boot, files cross both ways, read-only is enforced in the guest
// and on the host, the mounts come back after a stop and start and after a
// bangerd restart, and a delete leaves no virtiofsd, socket or directory.
func TestMounts(t *testing.T) {
	e := newEnv(t)
	parent := t.TempDir()
	os.Chmod(filepath.Dir(parent), 0o755)
	os.Chmod(parent, 0o755)
	const nobody = 65534
	rw, ro := shareFolders(t, parent, nobody)
	mounts := []string{"--mount", rw + ":/root/rw", "--mount", ro + ":/srv/docs:ro"}
	vm := e.create("mnt", append([]string{"--image", "minimal"}, mounts...)...)
	if len(vm.Mounts) != 2 || vm.Mounts[0].Host != rw || vm.Mounts[1].Guest != "/srv/docs" || !vm.Mounts[1].ReadOnly {
		t.Errorf("created VM's mounts = %+v", vm.Mounts)
	}
	if show := e.must("vm", "show", "mnt"); !strings.Contains(show, ro+" -> /srv/docs (read-only)") {
		t.Errorf("vm show lacks the read-only mount:\n%s", show)
	}
	e.checkMounts(t, "mnt", rw, ro, nobody, "after create")
	servers := e.virtiofsds()
	if len(servers) != 4 { // two virtiofsd, each with its sandboxed child
		t.Errorf("virtiofsd processes after create = %v, want 4 (two and their sandboxes)", servers)
	}

	e.must("vm", "stop", "mnt")
	if p := e.virtiofsds(); len(p) != 0 {
		t.Errorf("virtiofsd processes after stop = %v, want none", p)
	}
	socks, _ := filepath.Glob(filepath.Join(e.root, "run", "banger", "vms", vm.ID, "fs*.sock"))
	if len(socks) != 0 {
		t.Errorf("sockets after stop = %v, want none", socks)
	}
	e.must("vm", "start", "mnt")
	e.checkMounts(t, "mnt", rw, ro, nobody, "after stop and start")

	// A bangerd that dies leaves the VM and its virtiofsd running; the
	// next one adopts them.
	before := e.virtiofsds()
	e.killDaemon()
	e.startDaemon()
	if after := e.virtiofsds(); !slices.Equal(before, after) {
		t.Errorf("virtiofsd processes across a bangerd restart: %v, then %v; want the same", before, after)
	}
	e.checkMounts(t, "mnt", rw, ro, nobody, "after a bangerd restart")

	// The docker image (systemd) mounts them too.
	e.create("dmnt", "--image", "docker", "--mount", ro+":/srv/docs:ro", "--mount", rw+":/root/rw")
	if got := e.ssh("dmnt", "cat", "/srv/docs/hello", "/root/rw/from-guest"); !strings.Contains(got, "from the host: ro,docs") {
		t.Errorf("the docker guest reads %q from its mounts", got)
	}
	if out, err := e.try("dmnt", "touch", "/srv/docs/nope"); err == nil || !strings.Contains(out, "Read-only file system") {
		t.Errorf("docker guest: touch in the read-only mount = %v %q, want Read-only file system", err, out)
	}

	// Bad folders are refused and change nothing.
	e.fails(1, "create it first", "vm", "create", "bad", "--mount", filepath.Join(parent, "gone")+":/root/src")
	e.fails(1, "inside /etc", "vm", "create", "bad", "--mount", rw+":/etc/rw")
	e.fails(1, "owned by root", "vm", "create", "bad", "--mount", ro+":/root/src")
	e.fails(1, "banger's own files", "vm", "create", "bad", "--mount", e.root+":/srv/banger:ro")
	if _, err := e.show("bad"); err == nil {
		t.Error("a refused create made a VM")
	}

	e.must("vm", "delete", "--force", "mnt", "dmnt")
	if p := e.virtiofsds(); len(p) != 0 {
		t.Errorf("virtiofsd processes after delete = %v, want none", p)
	}
	if _, err := os.Stat(filepath.Join(e.root, "run", "banger", "vms", vm.ID)); !os.IsNotExist(err) {
		t.Errorf("runtime dir of the deleted VM: %v, want it gone", err)
	}
	if b, err := os.ReadFile(filepath.Join(ro, "hello")); err != nil || len(b) == 0 {
		t.Errorf("the host folder after delete: %q, %v; want it untouched", b, err)
	}
}

// TestMountsAsUser proves host folders through an ordinary user's bangerd,
// with exactly banger's sudoers rule (virtiofsd needs no sudo): virtiofsd
// runs as the user, the guest's root acts as the user, the user's own
// read-only folder is still read-only for the guest and on the host, and
// the mounts come back after a stop and start and a bangerd restart.
func TestMountsAsUser(t *testing.T) {
	openTUN(t)
	u := newTestUser(t, vmSudoers)
	e := newEnvWith(t, envOpts{user: u})
	rw, ro := shareFolders(t, filepath.Join(u.Home, "share"), -1)
	u.own(t, filepath.Join(u.Home, "share"))
	e.create("umnt", "--image", "minimal", "--mount", rw+":/root/rw", "--mount", ro+":/srv/docs:ro")
	e.checkMounts(t, "umnt", rw, ro, u.UID, "as "+u.Name)
	servers := e.virtiofsds()
	if len(servers) != 4 {
		t.Errorf("virtiofsd processes of %s's bangerd = %v, want 4 (two and their sandboxes)", u.Name, servers)
	}
	for _, pid := range servers {
		st, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		if err == nil && int(st.Sys().(*syscall.Stat_t).Uid) != u.UID {
			t.Errorf("virtiofsd %d runs as uid %d, want %s's %d", pid, st.Sys().(*syscall.Stat_t).Uid, u.Name, u.UID)
		}
	}
	e.must("vm", "stop", "umnt")
	if p := e.virtiofsds(); len(p) != 0 {
		t.Errorf("virtiofsd processes after stop as %s = %v, want none", u.Name, p)
	}
	e.must("vm", "start", "umnt")
	e.checkMounts(t, "umnt", rw, ro, u.UID, "as "+u.Name+" after stop and start")
	before := e.virtiofsds()
	e.killDaemon()
	e.startDaemon()
	if after := e.virtiofsds(); !slices.Equal(before, after) {
		t.Errorf("virtiofsd processes across a restart of %s's bangerd: %v, then %v; want the same", u.Name, before, after)
	}
	e.checkMounts(t, "umnt", rw, ro, u.UID, "as "+u.Name+" after a bangerd restart")
	e.must("vm", "delete", "--force", "umnt")
	if p := e.virtiofsds(); len(p) != 0 {
		t.Errorf("virtiofsd processes after delete = %v, want none", p)
	}
}
