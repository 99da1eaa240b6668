package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/web/login"
)

// statusDaemon answers GET /v1/status like a bangerd with the given state
// dir and pid, on a socket of its own.
func statusDaemon(t *testing.T, stateDir string, pid int) string {
	t.Helper()
	sock := filepath.Join(rpctest.TempDir(t), "bangerd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(rpc.Status{PID: pid, StateDir: stateDir, Socket: sock})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestUI(t *testing.T) {
	dir := isolate(t)
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	state := filepath.Join(dir, "daemon-state")
	os.MkdirAll(state, 0o700)
	f, err := login.Setup(filepath.Join(state, login.FileName), login.File{URL: "http://127.0.0.1:7777", Listen: "127.0.0.1:7777", Auth: "owner", PID: 4321})
	if err != nil {
		t.Fatal(err)
	}
	sock := statusDaemon(t, state, 4321)
	checker := login.NewChecker(f)

	for _, tc := range []struct {
		name    string
		sudoUID string
		want    int
	}{
		{"own user", "", os.Getuid()},
		// A root banger run through sudo makes the link for the sudo user's browser.
		{"under sudo", "1000", map[bool]int{true: 1000, false: os.Getuid()}[os.Geteuid() == 0]},
	} {
		t.Setenv("SUDO_UID", tc.sudoUID)
		r := run(t, "--socket", sock, "ui")
		link := strings.TrimSpace(r.stdout)
		u, err := url.Parse(link)
		if r.code != 0 || err != nil || u.Scheme+"://"+u.Host != "http://127.0.0.1:7777" || u.Path != "/login" {
			t.Fatalf("%s: banger ui = %d %q, want the login link on stdout", tc.name, r.code, r.stdout)
		}
		if !strings.Contains(r.stderr, "It works once, within 5m0s") || !strings.Contains(r.stderr, "Open it in your browser") {
			t.Errorf("%s: banger ui stderr = %q", tc.name, r.stderr)
		}
		tok := u.Query().Get("token")
		if _, _, err := checker.Redeem(tok, tc.want+1, time.Now()); err == nil {
			t.Errorf("%s: the link logs in uid %d too", tc.name, tc.want+1)
		}
		if _, _, err := checker.Redeem(tok, tc.want, time.Now()); err != nil {
			t.Errorf("%s: the link does not log in uid %d: %v", tc.name, tc.want, err)
		}
	}

	if r := run(t, "--socket", sock, "ui", "--remote"); r.code != 2 || !strings.Contains(r.stderr, `--remote needs web_auth = "login"`) {
		t.Errorf("banger ui --remote in the owner mode = %d %q, want 2 and a reason", r.code, r.stderr)
	}

	// A file left by another bangerd, or none, says what is wrong.
	if r := run(t, "--socket", statusDaemon(t, state, 99), "ui"); r.code != 1 || !strings.Contains(r.stderr, "bangerd (pid 99) serves no web UI; ") {
		t.Errorf("banger ui with a stale secret = %d %q", r.code, r.stderr)
	}
	if r := run(t, "--socket", statusDaemon(t, filepath.Join(dir, "none"), 7), "ui"); r.code != 1 || !strings.Contains(r.stderr, `serves no web UI: web_listen_addr is ""`) {
		t.Errorf("banger ui without a secret = %d %q", r.code, r.stderr)
	}
}

func TestUIRemote(t *testing.T) {
	dir := isolate(t)
	f, err := login.Setup(filepath.Join(dir, login.FileName), login.File{URL: "http://127.0.0.1:7777", Listen: "0.0.0.0:7777", Auth: "login", PID: 5})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, "--socket", statusDaemon(t, dir, 5), "ui", "--remote")
	host, _ := os.Hostname()
	u, err := url.Parse(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil || u.Host != net.JoinHostPort(host, "7777") {
		t.Fatalf("banger ui --remote = %d %q, want a link to %s:7777", r.code, r.stdout, host)
	}
	if _, _, err := login.NewChecker(f).Redeem(u.Query().Get("token"), login.Remote, time.Now()); err != nil {
		t.Errorf("the remote link does not log in a remote browser: %v", err)
	}
}
