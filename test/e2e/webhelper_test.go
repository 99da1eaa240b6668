package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary play a helper that runs as another local
// user (see asUser): BANGER_E2E_HELPER names what it does.
func TestMain(m *testing.M) {
	switch os.Getenv("BANGER_E2E_HELPER") {
	case "":
		code := m.Run()
		if helperOnce.path != "" {
			os.RemoveAll(filepath.Dir(helperOnce.path))
		}
		os.Exit(code)
	case "probe":
		os.Exit(probeMain(os.Stdin, os.Stdout))
	case "flood":
		os.Exit(floodMain(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]))
	default:
		fmt.Fprintln(os.Stderr, "unknown BANGER_E2E_HELPER")
		os.Exit(2)
	}
}

var helperOnce struct {
	sync.Once
	path string
	err  error
}

// helperBinary is a copy of this test binary that other users may run
// (go test's own build directory is private to root).
func helperBinary(t testing.TB) string {
	t.Helper()
	helperOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			helperOnce.err = err
			return
		}
		dir, err := os.MkdirTemp("", "bgt-helper")
		if err != nil {
			helperOnce.err = err
			return
		}
		os.Chmod(dir, 0o755)
		helperOnce.path = filepath.Join(dir, "e2e-helper")
		b, err := os.ReadFile(exe)
		if err == nil {
			err = os.WriteFile(helperOnce.path, b, 0o755)
		}
		helperOnce.err = err
	})
	if helperOnce.err != nil {
		t.Fatalf("copying the test binary for other users: %v", helperOnce.err)
	}
	return helperOnce.path
}

// asUser returns a command that runs this test binary as helper mode
// inside the env's namespace, as u.
func (e *env) asUser(ctx context.Context, u *testUser, mode string, args ...string) *exec.Cmd {
	cmd := e.ns.Command(ctx, "runuser", append([]string{"-u", u.Name, "--", helperBinary(e.t), "-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), "BANGER_E2E_HELPER="+mode)
	cmd.Dir = "/"
	return cmd
}

// probe is one HTTP request a helper sends.
type probe struct {
	Method string            `json:"method"`
	URL    string            `json:"url"`
	Header map[string]string `json:"header,omitempty"`
	Body   string            `json:"body,omitempty"`
}

// probeResult is what came back.
type probeResult struct {
	Status    int      `json:"status"`
	Body      string   `json:"body"`
	SetCookie []string `json:"set_cookie,omitempty"`
	Location  string   `json:"location,omitempty"`
	Err       string   `json:"err,omitempty"`
}

// probeAs sends each request as u from inside the namespace, each on a
// new connection, and returns the answers.
func (e *env) probeAs(u *testUser, probes []probe) []probeResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	in, _ := json.Marshal(probes)
	cmd := e.asUser(ctx, u, "probe")
	cmd.Stdin = bytes.NewReader(in)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("probing as %s: %v: %s", u.Name, err, errOut.String())
	}
	var res []probeResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res) != len(probes) {
		e.t.Fatalf("probing as %s: decoding %q: %v", u.Name, out.String(), err)
	}
	return res
}

// probeMain is the probe helper: requests on stdin, answers on stdout.
func probeMain(stdin io.Reader, stdout io.Writer) int {
	var probes []probe
	if err := json.NewDecoder(stdin).Decode(&probes); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 2
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var res []probeResult
	for _, p := range probes {
		var body io.Reader
		if p.Body != "" {
			body = strings.NewReader(p.Body)
		}
		req, err := http.NewRequest(p.Method, p.URL, body)
		if err != nil {
			res = append(res, probeResult{Err: err.Error()})
			continue
		}
		for k, v := range p.Header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			res = append(res, probeResult{Err: err.Error()})
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		res = append(res, probeResult{Status: resp.StatusCode, Body: string(b), SetCookie: resp.Header.Values("Set-Cookie"), Location: resp.Header.Get("Location")})
	}
	json.NewEncoder(stdout).Encode(res)
	return 0
}

// floodMain is the flood helper: it opens count idle connections to addr,
// prints how many it holds, and keeps them until stdin closes.
func floodMain(addr, countArg string) int {
	count, err := strconv.Atoi(countArg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood: bad count", countArg)
		return 2
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	var mu sync.Mutex
	var conns []net.Conn
	var failed int
	var firstErr error
	var wg sync.WaitGroup
	next := make(chan struct{})
	go func() {
		for range count {
			next <- struct{}{}
		}
		close(next)
	}()
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 10 * time.Second}
			for range next {
				c, err := d.Dial("tcp", addr)
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("holding %d failed %d in %s first_error %v\n", len(conns), failed, time.Since(start).Round(time.Millisecond), firstErr)
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}
