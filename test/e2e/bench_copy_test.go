package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchCopy is 'make bench-cp': BANGER_BENCH_N runs of vm cp of a
// 100 MiB file into a minimal VM and back, beside plain ssh streaming the
// same bytes with each cipher (cat to /dev/null in the guest, and out of
// the guest's page cache), and prints the medians. It never fails on
// timing.
func TestBenchCopy(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-cp does)")
	}
	e := newEnv(t)
	vm := e.create("bench", "--image", "minimal")
	host := t.TempDir()
	big := filepath.Join(host, "big.bin")
	bigFile(t, big, 100<<20, 0o644)
	const mib = float64(1 << 20)
	rate := func(args ...string) float64 {
		var res struct {
			BytesPerSecond float64 `json:"bytes_per_second"`
		}
		out := e.must(append([]string{"vm", "cp", "--json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("vm cp --json = %q: %v", out, err)
		}
		return res.BytesPerSecond / mib
	}
	info, err := e.client().SSHInfo(context.Background(), "bench")
	if err != nil {
		t.Fatal(err)
	}
	// Plain ssh with banger's key and pin, as vm cp runs it.
	sshRate := func(cipher, remote string, upload bool) float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		args := []string{"-T", "-o", "BatchMode=yes", "-i", info.KeyPath, "-o", "IdentitiesOnly=yes",
			"-o", "UserKnownHostsFile=" + info.KnownHosts, "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=" + info.HostAlias}
		if cipher != "" {
			args = append(args, "-c", cipher)
		}
		cmd := e.ns.Command(ctx, "ssh", append(args, "root@"+vm.IP, remote)...)
		if upload {
			f, err := os.Open(big)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd.Stdin = f
		}
		start := time.Now()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ssh %s: %v", remote, err)
		}
		if !upload && len(out) != 100<<20 {
			t.Fatalf("ssh %s gave %d bytes", remote, len(out))
		}
		return 100 / time.Since(start).Seconds()
	}
	ciphers := []string{"", "chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes128-ctr"}
	res := map[string][]float64{}
	var order []string
	add := func(k string, v float64) {
		if _, ok := res[k]; !ok {
			order = append(order, k)
		}
		res[k] = append(res[k], v)
	}
	for i := 0; i < n; i++ {
		up := rate(big, "bench:/var/tmp/big.bin")
		back := filepath.Join(host, "back.bin")
		down := rate("bench:/var/tmp/big.bin", back)
		os.Remove(back)
		add("banger vm cp, host to guest", up)
		add("banger vm cp, guest to host", down)
		for _, c := range ciphers {
			label := c
			if label == "" {
				label = "default cipher"
			}
			add("ssh cat, host to guest, "+label, sshRate(c, "cat > /dev/null", true))
			add("ssh cat, guest to host, "+label, sshRate(c, "cat /var/tmp/big.bin", false))
		}
		t.Logf("run %d: vm cp up %.1f MiB/s, down %.1f MiB/s", i+1, up, down)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-cp: 100 MiB, minimal image, %d runs (QEMU microvm, TCG here)\n", n)
	fmt.Fprintf(&b, "%-58s %12s %8s\n", "", "median MiB/s", "min")
	for _, k := range order {
		fmt.Fprintf(&b, "%-58s %12.1f %8.1f\n", k, quantile(res[k], 0.5), quantile(res[k], 0))
	}
	fmt.Print(b.String())
}
