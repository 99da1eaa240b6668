package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bigFile writes size random bytes to path with mode and an old mtime,
// and returns their sha256.
func bigFile(t *testing.T, path string, size int64, mode fs.FileMode) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
	old := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	os.Chtimes(path, old, old)
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// hostListing lists a tree as "path type mode size mtime sha256-or-target"
// lines, in the format guestListing prints.
func hostListing(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		typ, what, size := "f", "", fi.Size()
		switch {
		case fi.IsDir():
			typ, size = "d", 0
		case fi.Mode()&fs.ModeSymlink != 0:
			typ, size = "l", 0
			what, _ = os.Readlink(p)
		default:
			what = fileSum(t, p)
		}
		mt := fmt.Sprint(fi.ModTime().Unix())
		if typ == "l" {
			mt = "-"
		}
		out = append(out, fmt.Sprintf("%s %s %o %d %s %s", rel, typ, fi.Mode().Perm(), size, mt, what))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// guestListing is hostListing of a tree in the guest, with find, stat and
// sha256sum (in both images).
func (e *env) guestListing(vm, root string) []string {
	e.t.Helper()
	script := `cd "$1" && find . -mindepth 1 | while IFS= read -r p; do
		p=${p#./}
		if [ -L "$p" ]; then printf '%s l %s 0 - %s\n' "$p" "$(stat -c %a "$p")" "$(readlink "$p")"
		elif [ -d "$p" ]; then printf '%s d %s 0 %s \n' "$p" "$(stat -c %a "$p")" "$(stat -c %Y "$p")"
		else printf '%s f %s %s %s %s\n' "$p" "$(stat -c %a "$p")" "$(stat -c %s "$p")" "$(stat -c %Y "$p")" "$(sha256sum < "$p" | cut -d' ' -f1)"; fi
	done | sort`
	out := e.ssh(vm, "sh", "-c", shq(script), "list", shq(root))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return lines
}

// shq quotes s for the guest's shell (vm ssh joins its words as ssh does).
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// makeCopyTree writes a tree with modes, a symlink, an empty directory and
// a read-only directory, with old mtimes.
func makeCopyTree(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"src/pkg", "empty", "bin", "ro"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]fs.FileMode{"README": 0o644, "src/pkg/main.go": 0o600, "bin/run": 0o755, "ro/data": 0o444, "src/with space.txt": 0o640}
	for p, m := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte("content of "+p+"\n"), m); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, p), m)
	}
	bigFile(t, filepath.Join(root, "src", "blob"), 3<<20, 0o640)
	os.Symlink("../README", filepath.Join(root, "src", "readme-link"))
	os.Chmod(filepath.Join(root, "src"), 0o750)
	os.Chmod(filepath.Join(root, "empty"), 0o700)
	os.Chmod(filepath.Join(root, "ro"), 0o555)
	old := time.Date(2023, 6, 7, 8, 9, 10, 0, time.UTC)
	for _, p := range []string{"README", "src/pkg/main.go", "bin/run", "ro/data", "src/with space.txt", "src/pkg", "empty", "bin", "ro", "src", "."} {
		os.Chtimes(filepath.Join(root, p), old, old)
	}
}

// leftovers lists banger's staging names in a host directory.
func leftovers(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, ".banger-cp*"))
	return m
}

// guestLeftovers lists banger's staging names in a guest directory.
func (e *env) guestLeftovers(vm, dir string) string {
	e.t.Helper()
	return strings.TrimSpace(e.ssh(vm, "sh", "-c", shq(`ls -A "$1" | grep '^\.banger-cp' || true`), "x", dir))
}

// fails runs banger and wants it to exit code with want in its stderr.
func (e *env) fails(code int, want string, args ...string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, errOut, err := e.banger(ctx, args...)
	var ee *exec.ExitError
	if !asExit(err, &ee) || ee.ExitCode() != code || !strings.Contains(errOut, want) {
		e.t.Errorf("banger %s = %v\nstdout: %s\nstderr: %s\nwant exit %d and %q", strings.Join(args, " "), err, out, errOut, code, want)
	}
}

// TestCopy proves vm cp on one minimal VM: 100 MiB and a directory tree
// both ways, compared by sha256, modes and mtimes; clear errors that leave
// nothing behind for a missing path, a full guest disk, an interrupt and a
// stopped VM; and a guest whose host key changed refused.
func TestCopy(t *testing.T) {
	e := newEnv(t)
	e.create("files", "--image", "minimal")
	host := t.TempDir()
	upRate := 0.0 // MiB/s into the guest, measured by the first subtest

	t.Run("100 MiB both ways", func(t *testing.T) {
		e := e.with(t)
		big := filepath.Join(host, "big.bin")
		sum := bigFile(t, big, 100<<20, 0o640)
		out := e.must("vm", "cp", "--json", big, "files:/var/tmp/")
		var res struct {
			Bytes          int64   `json:"bytes"`
			BytesPerSecond float64 `json:"bytes_per_second"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || res.Bytes != 100<<20 {
			t.Fatalf("vm cp --json = %q (%v), want 100 MiB copied", out, err)
		}
		upRate = res.BytesPerSecond / (1 << 20)
		t.Logf("host to guest: %.1f MiB/s", upRate)
		guest := strings.Fields(e.ssh("files", "sh", "-c", shq("sha256sum /var/tmp/big.bin; stat -c '%a %Y %s' /var/tmp/big.bin")))
		if len(guest) != 5 || guest[0] != sum || guest[2] != "640" || guest[3] != "1706933106" || guest[4] != "104857600" {
			t.Errorf("guest copy = %q, want sha256 %s, mode 640, mtime 1706933106, 104857600 bytes", guest, sum)
		}
		back := filepath.Join(host, "back.bin")
		out = e.must("vm", "cp", "--json", "files:/var/tmp/big.bin", back)
		json.Unmarshal([]byte(out), &res)
		t.Logf("guest to host: %.1f MiB/s", res.BytesPerSecond/(1<<20))
		fi, err := os.Stat(back)
		if err != nil || fileSum(t, back) != sum || fi.Mode().Perm() != 0o640 || fi.ModTime().Unix() != 1706933106 {
			t.Errorf("copied back: %v %v, want sha256 %s, mode 0640, mtime 1706933106", fi, err, sum)
		}
		if l := leftovers(host); len(l) > 0 {
			t.Errorf("staging left on the host: %q", l)
		}
		if l := e.guestLeftovers("files", "/var/tmp"); l != "" {
			t.Errorf("staging left in the guest: %q", l)
		}
		os.Remove(back)
	})

	t.Run("directory tree both ways", func(t *testing.T) {
		e := e.with(t)
		src := filepath.Join(host, "tree")
		makeCopyTree(t, src)
		t.Cleanup(func() { os.Chmod(filepath.Join(src, "ro"), 0o755) })
		want := hostListing(t, src)
		e.ssh("files", "mkdir", "-p", "/var/tmp/in")
		e.must("vm", "cp", "-r", src, "files:/var/tmp/in")
		if got := e.guestListing("files", "/var/tmp/in/tree"); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("tree in the guest:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Back into an existing directory, and again over the first copy
		// (a merge).
		dst := filepath.Join(host, "out")
		os.Mkdir(dst, 0o755)
		for i := 0; i < 2; i++ {
			e.must("vm", "cp", "-r", "files:/var/tmp/in/tree", dst)
		}
		t.Cleanup(func() { os.Chmod(filepath.Join(dst, "tree", "ro"), 0o755) })
		if got := hostListing(t, filepath.Join(dst, "tree")); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("tree after the round trip:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if l := leftovers(dst); len(l) > 0 {
			t.Errorf("staging left on the host: %q", l)
		}
		if l := e.guestLeftovers("files", "/var/tmp/in"); l != "" {
			t.Errorf("staging left in the guest: %q", l)
		}
	})

	t.Run("missing paths", func(t *testing.T) {
		e := e.with(t)
		x := filepath.Join(host, "x")
		e.fails(1, "/nonexistent: no such file or directory", "vm", "cp", "files:/nonexistent", x)
		e.fails(1, "nothere: no such file or directory", "vm", "cp", filepath.Join(host, "nothere"), "files:/var/tmp/")
		os.WriteFile(x, []byte("small"), 0o644)
		e.fails(1, "/no/such: no such directory", "vm", "cp", x, "files:/no/such/file")
		e.fails(1, "use -r", "vm", "cp", "files:/var/tmp/in", filepath.Join(host, "y"))
		if _, err := os.Lstat(filepath.Join(host, "y")); err == nil || len(leftovers(host)) > 0 {
			t.Errorf("a failed copy left %s or %q", filepath.Join(host, "y"), leftovers(host))
		}
		os.Remove(x)
	})

	t.Run("full guest disk", func(t *testing.T) {
		e := e.with(t)
		e.ssh("files", "sh", "-c", shq("mkdir -p /mnt/small && mount -t tmpfs -o size=16m tmpfs /mnt/small && echo keep > /mnt/small/old"))
		big := filepath.Join(host, "big24.bin")
		bigFile(t, big, 24<<20, 0o644)
		e.fails(1, "no space left on the guest's disk for /mnt/small", "vm", "cp", big, "files:/mnt/small/")
		// A tree too, and a copy that replaces an existing file.
		e.fails(1, "no space left", "vm", "cp", big, "files:/mnt/small/old")
		if got := strings.TrimSpace(e.ssh("files", "sh", "-c", shq("ls -A /mnt/small; cat /mnt/small/old; df -k /mnt/small | tail -1"))); !strings.HasPrefix(got, "old\nkeep\n") {
			t.Errorf("guest /mnt/small after the failed copies:\n%s\nwant only the old file, unchanged", got)
		}
		os.Remove(big)
	})

	t.Run("interrupted", func(t *testing.T) {
		e := e.with(t)
		// Big enough to take some 10 s at the measured rate, so the
		// interrupt at 2.5 s comes well inside the copy (at most 600 MiB:
		// the minimal image's free space).
		size := int64(100 << 20)
		if upRate > 0 {
			size = min(max(size, int64(upRate*10)<<20), 600<<20)
		}
		big := filepath.Join(host, "intr.bin")
		bigFile(t, big, size, 0o644)
		interrupt := func(args ...string) {
			t.Helper()
			cmd := e.command(context.Background(), filepath.Join(e.bin, "banger"), args...)
			var errOut bytes.Buffer
			cmd.Stderr = &errOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2500 * time.Millisecond) // well into the copy
			cmd.Process.Signal(syscall.SIGINT)
			err := cmd.Wait()
			if err == nil {
				t.Fatalf("banger %s finished before the interrupt: make the file larger", strings.Join(args, " "))
			}
			var ee *exec.ExitError
			if !asExit(err, &ee) || ee.ExitCode() != 130 || !strings.Contains(errOut.String(), "interrupted: nothing was written") {
				t.Errorf("banger %s, interrupted: %v %q, want exit 130 and nothing written", strings.Join(args, " "), err, errOut.String())
			}
		}
		interrupt("vm", "cp", big, "files:/var/tmp/intr.bin")
		// The guest removes its staging directory when the stream stops.
		deadline := time.Now().Add(20 * time.Second)
		for e.guestLeftovers("files", "/var/tmp") != "" && time.Now().Before(deadline) {
			time.Sleep(500 * time.Millisecond)
		}
		if got := strings.TrimSpace(e.ssh("files", "sh", "-c", shq("ls -A /var/tmp"))); strings.Contains(got, "intr") || strings.Contains(got, ".banger-cp") {
			t.Errorf("guest /var/tmp after an interrupted copy: %q", got)
		}
		e.must("vm", "cp", big, "files:/var/tmp/intr.bin")
		interrupt("vm", "cp", "files:/var/tmp/intr.bin", filepath.Join(host, "intr-back.bin"))
		if _, err := os.Lstat(filepath.Join(host, "intr-back.bin")); err == nil || len(leftovers(host)) > 0 {
			t.Errorf("an interrupted copy from the guest left a file or %q", leftovers(host))
		}
		e.ssh("files", "rm", "-f", "/var/tmp/intr.bin")
		os.Remove(big)
	})

	t.Run("changed host key refused", func(t *testing.T) {
		e := e.with(t)
		cfg := filepath.Join(host, "ssh_config")
		os.WriteFile(cfg, []byte(e.must("ssh-config", "files")), 0o600)
		sshOK := func(name string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			return e.ns.Command(ctx, "ssh", "-F", cfg, "-o", "BatchMode=yes", name, "true").CombinedOutput()
		}
		for _, name := range []string{"files", "files.vm"} {
			if out, err := sshOK(name); err != nil {
				t.Fatalf("ssh -F ssh_config %s: %v: %s", name, err, out)
			}
		}
		// A new host key, and sshd restarted on it (the agent restarts the
		// minimal image's sshd when it exits).
		e.ssh("files", "sh", "-c", shq(`rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key && kill "$(cat /run/sshd.pid)"`))
		var out []byte
		var err error
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			out, err = sshOK("files")
			if strings.Contains(string(out), "HOST IDENTIFICATION HAS CHANGED") {
				break
			}
			time.Sleep(time.Second)
		}
		if err == nil || !strings.Contains(string(out), "Host key verification failed") {
			t.Fatalf("ssh to a guest with a new host key: %v: %s, want it refused", err, out)
		}
		if out, err := sshOK("files.vm"); err == nil || !strings.Contains(string(out), "Host key verification failed") {
			t.Errorf("ssh files.vm to a guest with a new host key: %v: %s, want it refused", err, out)
		}
		e.fails(1, "does not match the one bangerd pinned for files.vm", "vm", "cp", "files:/etc/hostname", filepath.Join(host, "h"))
		if _, err := os.Lstat(filepath.Join(host, "h")); err == nil {
			t.Errorf("a refused copy wrote %s", filepath.Join(host, "h"))
		}
	})

	t.Run("stopped vm", func(t *testing.T) {
		e := e.with(t)
		e.must("vm", "stop", "files")
		small := filepath.Join(host, "small")
		os.WriteFile(small, []byte("small"), 0o644)
		e.fails(1, "vm files is stopped, not running: start it with: banger vm start files", "vm", "cp", small, "files:/var/tmp/")
		e.fails(1, "banger vm start files", "vm", "cp", "files:/etc/hostname", filepath.Join(host, "h"))
		if _, err := os.Lstat(filepath.Join(host, "h")); err == nil || len(leftovers(host)) > 0 {
			t.Errorf("a copy from a stopped VM left a file or %q", leftovers(host))
		}
	})
}

// TestStockSSHTools proves that banger ssh-config lets stock scp, sftp,
// rsync -a and git push reach a docker-image VM with banger's key and
// pinned host key, and that --install and --uninstall edit only their
// Include line of a ~/.ssh/config (in a temporary HOME: ssh itself reads
// the passwd entry's home, so the test hands ssh that file with -F).
func TestStockSSHTools(t *testing.T) {
	e := newEnv(t)
	e.create("tools")
	host := t.TempDir()
	cfg := filepath.Join(host, "ssh_config")
	os.WriteFile(cfg, []byte(e.must("ssh-config")), 0o600)
	run := func(t *testing.T, env []string, dir, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := e.ns.Command(ctx, name, args...)
		cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	t.Run("ssh", func(t *testing.T) {
		for _, name := range []string{"tools", "tools.vm"} {
			if got := strings.TrimSpace(run(t, nil, host, "ssh", "-F", cfg, name, "hostname")); got != "tools" {
				t.Errorf("ssh -F ssh_config %s hostname = %q, want tools", name, got)
			}
		}
	})

	t.Run("scp and sftp", func(t *testing.T) {
		f := filepath.Join(host, "scp.bin")
		sum := bigFile(t, f, 5<<20, 0o640)
		run(t, nil, host, "scp", "-F", cfg, "-p", f, "tools:/root/scp.bin")
		run(t, nil, host, "scp", "-F", cfg, "tools:/root/scp.bin", filepath.Join(host, "scp-back.bin"))
		if got := fileSum(t, filepath.Join(host, "scp-back.bin")); got != sum {
			t.Errorf("scp round trip sha256 = %s, want %s", got, sum)
		}
		batch := filepath.Join(host, "sftp-batch")
		os.WriteFile(batch, []byte("put "+f+" /root/sftp.bin\nls -l /root/sftp.bin\n"), 0o600)
		if out := run(t, nil, host, "sftp", "-F", cfg, "-b", batch, "tools"); !strings.Contains(out, "/root/sftp.bin") {
			t.Errorf("sftp batch said %q", out)
		}
		if got := strings.Fields(e.ssh("tools", "sha256sum", "/root/sftp.bin")); len(got) == 0 || got[0] != sum {
			t.Errorf("sftp's copy in the guest = %q, want sha256 %s", got, sum)
		}
		e.ssh("tools", "rm", "-f", "/root/scp.bin", "/root/sftp.bin")
	})

	t.Run("rsync -a", func(t *testing.T) {
		src := filepath.Join(host, "rtree")
		makeCopyTree(t, src)
		t.Cleanup(func() { os.Chmod(filepath.Join(src, "ro"), 0o755) })
		run(t, nil, host, "rsync", "-a", "-e", "ssh -F "+cfg, src+"/", "tools:/root/rtree/")
		want := hostListing(t, src)
		if got := e.guestListing("tools", "/root/rtree"); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("rsync -a tree in the guest:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		e.ssh("tools", "sh", "-c", shq("chmod -R u+w /root/rtree && rm -rf /root/rtree"))
	})

	t.Run("git push", func(t *testing.T) {
		e.ssh("tools", "git", "init", "-q", "--bare", "/root/repo.git")
		repo := filepath.Join(host, "repo")
		os.Mkdir(repo, 0o755)
		gitEnv := []string{"GIT_SSH_COMMAND=ssh -F " + cfg, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + host}
		run(t, gitEnv, repo, "git", "init", "-q", "-b", "main")
		os.WriteFile(filepath.Join(repo, "hello.txt"), []byte("hello\n"), 0o644)
		run(t, gitEnv, repo, "git", "add", "hello.txt")
		run(t, gitEnv, repo, "git", "commit", "-q", "-m", "first from the host")
		run(t, gitEnv, repo, "git", "push", "-q", "tools:/root/repo.git", "main")
		if got := e.ssh("tools", "git", "--git-dir=/root/repo.git", "log", "--format=%s", "main"); strings.TrimSpace(got) != "first from the host" {
			t.Errorf("the guest's bare repo has log %q, want the pushed commit", got)
		}
	})

	t.Run("install and uninstall", func(t *testing.T) {
		home := filepath.Join(host, "home")
		user := filepath.Join(home, ".ssh", "config")
		os.MkdirAll(filepath.Dir(user), 0o700)
		mine := "# mine\r\nHost *\r\n  ServerAliveInterval 30"
		os.WriteFile(user, []byte(mine), 0o600)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		banger := func(args ...string) string {
			cmd := e.command(ctx, filepath.Join(e.bin, "banger"), args...)
			cmd.Env = append(cmd.Env, "HOME="+home)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("banger %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		banger("ssh-config", "--install")
		banger("ssh-config", "--install")
		b, _ := os.ReadFile(user)
		managed := filepath.Join(e.root, "state", "banger", "ssh_config")
		if want := "Include " + managed + "\r\n" + mine; string(b) != want {
			t.Errorf("~/.ssh/config after --install twice = %q, want %q", b, want)
		}
		if got := strings.TrimSpace(run(t, nil, host, "ssh", "-F", user, "tools", "hostname")); got != "tools" {
			t.Errorf("ssh through the installed config: hostname = %q", got)
		}
		banger("ssh-config", "--uninstall")
		if b, _ := os.ReadFile(user); string(b) != mine {
			t.Errorf("~/.ssh/config after --uninstall = %q, want %q", b, mine)
		}
		if fi, _ := os.Stat(user); fi.Mode().Perm() != 0o600 {
			t.Errorf("~/.ssh/config mode = %v, want 0600", fi.Mode().Perm())
		}
	})
}

// TestCopyAsUser runs vm cp and ssh-config --install as an ordinary user
// with exactly banger's sudoers rule and their own bangerd: after the
// install, plain "ssh ubox" and "scp" work from the user's account with
// no options at all.
func TestCopyAsUser(t *testing.T) {
	openTUN(t)
	u := newTestUser(t, vmSudoers)
	e := newEnvWith(t, envOpts{user: u})
	e.create("ubox", "--image", "minimal")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	as := func(name string, args ...string) string {
		t.Helper()
		out, err := e.command(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s as %s: %v\n%s", name, strings.Join(args, " "), u.Name, err, out)
		}
		return string(out)
	}
	work := filepath.Join(u.Home, "work")
	as("mkdir", "-p", work)
	as("sh", "-c", "head -c 3000000 /dev/urandom > "+work+"/f.bin && chmod 640 "+work+"/f.bin")
	sum := fileSum(t, filepath.Join(work, "f.bin"))
	e.must("vm", "cp", filepath.Join(work, "f.bin"), "ubox:")
	e.must("vm", "cp", "ubox:f.bin", filepath.Join(work, "back.bin"))
	fi, err := os.Stat(filepath.Join(work, "back.bin"))
	if err != nil || fileSum(t, filepath.Join(work, "back.bin")) != sum || fi.Mode().Perm() != 0o640 || int(fi.Sys().(*syscall.Stat_t).Uid) != u.UID {
		t.Errorf("copied back as %s: %v %v, want sha256 %s, mode 0640, owned by uid %d", u.Name, fi, err, sum, u.UID)
	}

	e.must("ssh-config", "--install")
	if got := strings.TrimSpace(as("ssh", "-o", "BatchMode=yes", "ubox", "hostname")); got != "ubox" {
		t.Errorf("plain ssh ubox as %s = %q, want ubox", u.Name, got)
	}
	as("scp", "-o", "BatchMode=yes", "ubox.vm:f.bin", filepath.Join(work, "scp.bin"))
	if fileSum(t, filepath.Join(work, "scp.bin")) != sum {
		t.Errorf("plain scp ubox.vm:f.bin as %s copied other bytes", u.Name)
	}
	e.must("ssh-config", "--uninstall")
	if b, err := os.ReadFile(filepath.Join(u.Home, ".ssh", "config")); err != nil || len(b) != 0 {
		t.Errorf("%s's ~/.ssh/config after --uninstall = %q, %v, want empty", u.Name, b, err)
	}
	if out, err := e.command(ctx, "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "ubox", "true").CombinedOutput(); err == nil {
		t.Errorf("ssh ubox still works after --uninstall: %s", out)
	}
}
