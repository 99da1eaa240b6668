package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchPorts is 'make bench-ports': on a minimal VM with a published
// port, BANGER_BENCH_N runs of 100 MiB from and to the guest's server
// through the port on the host's loopback and directly to the guest's
// address, and the time of a fresh connection's first answer and of a UDP
// round trip both ways; it prints the medians. It never fails on timing.
func TestBenchPorts(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-ports does)")
	}
	e := newEnv(t)
	vm := e.create("bench", "--image", "minimal", "-p", "18080:8080", "-p", "15353:5353/udp")
	e.startGuestServer("bench", guestServer(t))
	const size = 100 << 20
	paths := []struct{ name, http, udp string }{
		{"through the published ports on 127.0.0.1", "127.0.0.1:18080", "127.0.0.1:15353"},
		{"direct to the guest at " + vm.IP, vm.IP + ":8080", vm.IP + ":5353"},
	}
	// One client per path, its connections made inside the namespace.
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, network, a string) (net.Conn, error) { return e.ns.Dial(ctx, network, a) },
	}}
	download := func(addr string) float64 {
		start := time.Now()
		resp, err := client.Get(fmt.Sprintf("http://%s/zero?n=%d", addr, size))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || got != size {
			t.Fatalf("download through %s: %d bytes, %v", addr, got, err)
		}
		return float64(size) / (1 << 20) / time.Since(start).Seconds()
	}
	upload := func(addr string) float64 {
		start := time.Now()
		resp, err := client.Post("http://"+addr+"/sink", "application/octet-stream", io.LimitReader(zeros{}, size))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(b)) != strconv.Itoa(size) {
			t.Fatalf("upload through %s: the guest read %q bytes", addr, b)
		}
		return float64(size) / (1 << 20) / time.Since(start).Seconds()
	}
	// firstAnswer is a new connection's GET / until its answer is read.
	firstAnswer := func(addr string) float64 {
		start := time.Now()
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return ms(time.Since(start))
	}
	udpRTT := func(addr string) float64 {
		c, err := e.ns.Dial(context.Background(), "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 512)
		for {
			start := time.Now()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte("ping"))
			if _, err := c.Read(buf); err == nil {
				return ms(time.Since(start))
			}
		}
	}
	res := map[string][]float64{}
	var order []string
	add := func(k string, v float64) {
		if _, ok := res[k]; !ok {
			order = append(order, k)
		}
		res[k] = append(res[k], v)
	}
	for i := 0; i < n; i++ {
		for _, p := range paths {
			add("100 MiB guest to host (MiB/s), "+p.name, download(p.http))
			add("100 MiB host to guest (MiB/s), "+p.name, upload(p.http))
			for j := 0; j < 20; j++ {
				add("new connection to first answer (ms), "+p.name, firstAnswer(p.http))
				add("UDP round trip (ms), "+p.name, udpRTT(p.udp))
			}
		}
		t.Logf("run %d of %d done", i+1, n)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-ports: minimal image, %d runs (QEMU microvm, TCG here); latencies over %d samples\n", n, 20*n)
	fmt.Fprintf(&b, "%-78s %10s %10s\n", "", "median", "p90")
	for _, k := range order {
		fmt.Fprintf(&b, "%-78s %10.2f %10.2f\n", k, quantile(res[k], 0.5), quantile(res[k], 0.9))
	}
	fmt.Print(b.String())
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
