package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// benchFiles is the size of the tree that 'make bench-mounts' runs git
// status on.
const benchFiles = 10000

// guestNanos runs script in the guest between two readings of its
// monotonic clock and returns the nanoseconds between them. The guest's
// answer is the one line the script prints last; anything else fails.
func (e *env) guestNanos(t *testing.T, name, script string) float64 {
	t.Helper()
	out := e.ssh(name, "sh", "-c", "'"+"set -e; s=$(date +%s%N); "+script+" >/dev/null 2>&1; f=$(date +%s%N); echo $((f-s))"+"'")
	line := strings.TrimSpace(out)
	if len(line) > 20 {
		t.Fatalf("guest timing of %q: %q is no nanosecond count", script, out)
	}
	ns, err := strconv.ParseInt(line, 10, 64)
	if err != nil || ns <= 0 {
		t.Fatalf("guest timing of %q: %q is no nanosecond count: %v", script, out, err)
	}
	return float64(ns)
}

// gitTree makes a git repository of n small files in dir, in 100 folders,
// with one commit, using the host's git.
func gitTree(t *testing.T, dir string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i%100))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.txt", i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "."},
		{"-c", "user.name=bench", "-c", "user.email=bench@banger.invalid", "commit", "-q", "-m", "tree"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
		}
	}
}

// TestBenchMounts is 'make bench-mounts': BANGER_BENCH_N runs, in a docker
// image VM of a root bangerd, of writing and reading one 256 MiB file and
// of git status on a tree of 10,000 files, through a virtio-fs host folder
// and inside the guest's /root disk, and prints the medians. Each step is
// timed by the guest's clock, so ssh's own cost is not in the figures; the
// guest's page cache is dropped before each read and each cold git status.
// It never fails on timing.
func TestBenchMounts(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-mounts does)")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("bench-mounts needs git on the host to make its tree")
	}
	e := newEnv(t)
	parent := t.TempDir()
	os.Chmod(filepath.Dir(parent), 0o755)
	os.Chmod(parent, 0o755)
	// A root bangerd's guest acts as a read-write folder's owner, which may
	// not be root.
	const nobody = 65534
	share := filepath.Join(parent, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	gitTree(t, filepath.Join(share, "tree"), benchFiles)
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", nobody, nobody), share).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v\n%s", share, err, out)
	}
	e.create("bench", "--image", "docker", "--mount", share+":/srv/share")
	// The same tree inside /root, as the guest sees it.
	e.ssh("bench", "cp", "-a", "/srv/share/tree", "/root/tree")

	const size = 256
	places := []struct{ label, dir string }{{"virtio-fs mount", "/srv/share"}, {"/root (virtio-blk)", "/root"}}
	git := "git -c safe.directory=* -C %s/tree status --porcelain"
	for _, p := range places {
		// The first status refreshes the index a copy or another kernel
		// made: not what is measured.
		e.ssh("bench", "sh", "-c", "'"+fmt.Sprintf(git, p.dir)+" >/dev/null'")
	}
	res := map[string][]float64{}
	var order []string
	add := func(k string, v float64) {
		if _, ok := res[k]; !ok {
			order = append(order, k)
		}
		res[k] = append(res[k], v)
	}
	const drop = "sync; echo 3 > /proc/sys/vm/drop_caches; "
	for i := 0; i < n; i++ {
		for _, p := range places {
			f := p.dir + "/big.bin"
			w := e.guestNanos(t, "bench", fmt.Sprintf("dd if=/dev/zero of=%s bs=1M count=%d conv=fsync", f, size))
			e.ssh("bench", "sh", "-c", "'"+drop+"'")
			r := e.guestNanos(t, "bench", fmt.Sprintf("dd if=%s of=/dev/null bs=1M", f))
			e.ssh("bench", "rm", "-f", f)
			e.ssh("bench", "sh", "-c", "'"+drop+"'")
			cold := e.guestNanos(t, "bench", fmt.Sprintf(git, p.dir))
			warm := e.guestNanos(t, "bench", fmt.Sprintf(git, p.dir))
			add("write 256 MiB, MiB/s, "+p.label, size/(w/1e9))
			add("read 256 MiB, MiB/s, "+p.label, size/(r/1e9))
			add("git status, 10,000 files, cold, s, "+p.label, cold/1e9)
			add("git status, 10,000 files, warm, s, "+p.label, warm/1e9)
			t.Logf("run %d, %s: write %.1f MiB/s, read %.1f MiB/s, git status cold %.2fs warm %.2fs",
				i+1, p.label, size/(w/1e9), size/(r/1e9), cold/1e9, warm/1e9)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-mounts: docker image, %d runs (QEMU microvm, TCG here), timed by the guest\n", n)
	fmt.Fprintf(&b, "%-56s %10s %8s %8s\n", "", "median", "min", "max")
	for _, k := range order {
		fmt.Fprintf(&b, "%-56s %10.2f %8.2f %8.2f\n", k, quantile(res[k], 0.5), quantile(res[k], 0), quantile(res[k], 1))
	}
	fmt.Print(b.String())
}
