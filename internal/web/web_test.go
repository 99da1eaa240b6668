package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
)

const testHost = "127.0.0.1:7777"

// testOwner is the owner of the UI under test; requests come from it
// unless they say otherwise.
var testOwner = os.Getuid()

// newTest returns a fake bangerd with two VMs and the UI's handler talking
// to it. The file picker's root is a fresh directory (s.FileRoots[0]).
func newTest(t *testing.T) (*rpctest.Fake, *Server, http.Handler) {
	t.Helper()
	f := rpctest.Start(t)
	f.ReverseVMs = true // the UI sorts
	f.Add(rpc.VM{Name: "alpha", State: "running", OpencodePassword: "pw-alpha", Image: "docker", IP: "172.30.0.2", VCPUs: 2, MemoryMiB: 1024, NAT: true,
		Stages: []rpc.Stage{{Name: "preparing disks", DurationMS: 300}, {Name: "waiting for ssh", DurationMS: 1100}}})
	f.Add(rpc.VM{Name: "beta", State: "stopped", Image: "minimal", IP: "172.30.0.3", VCPUs: 1, MemoryMiB: 512})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := New(f.Client(), Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Context: ctx,
		Owner: testOwner, FileRoots: []string{t.TempDir()}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return f, s, s.Handler()
}

// quiet is a logger for tests.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// request is one request to the handler under test.
type request struct {
	method, target string
	form           url.Values
	json           bool
	host           string
	origin         *string // nil: same origin on POST
	referer        string
	cookies        []*http.Cookie
	// peer is the uid the request's connection comes from; nil means testOwner.
	peer *int
}

func do(t *testing.T, h http.Handler, q request) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader
	if q.form != nil {
		body = strings.NewReader(q.form.Encode())
	}
	r := httptest.NewRequest(q.method, q.target, body)
	r.Host = testHost
	if q.host == "none" {
		r.Host = ""
	} else if q.host != "" {
		r.Host = q.host
	}
	if q.form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if q.json {
		r.Header.Set("Accept", "application/json")
	} else {
		r.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	}
	switch {
	case q.origin != nil:
		if *q.origin != "" {
			r.Header.Set("Origin", *q.origin)
		}
	case q.method != http.MethodGet && q.method != http.MethodHead && q.referer == "":
		r.Header.Set("Origin", "http://"+r.Host)
	}
	if q.referer != "" {
		r.Header.Set("Referer", q.referer)
	}
	for _, c := range q.cookies {
		r.AddCookie(c)
	}
	uid := testOwner
	if q.peer != nil {
		uid = *q.peer
	}
	r = r.WithContext(withPeer(r.Context(), peerInfo{uid: uid}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func ptr[T any](v T) *T { return &v }

// serve serves s on a loopback port for the test and returns its base URL
// and a client that does not follow redirects.
func serve(t *testing.T, s *Server) (string, *http.Client) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := s.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	t.Cleanup(cl.CloseIdleConnections)
	return "http://" + ln.Addr().String(), cl
}

// flashOf decodes the flash cookie a response sets.
func flashOf(t *testing.T, w *httptest.ResponseRecorder) *flash {
	t.Helper()
	for _, c := range w.Result().Cookies() {
		if c.Name == flashCookie && c.MaxAge > 0 {
			r := httptest.NewRequest("GET", "/", nil)
			r.AddCookie(c)
			return takeFlash(httptest.NewRecorder(), r)
		}
	}
	return nil
}

func decode[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json; body %s", ct, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("decoding %s: %v", w.Body, err)
	}
	return v
}

func mustContain(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, s := range wants {
		if !strings.Contains(body, s) {
			t.Errorf("page lacks %q:\n%s", s, body)
		}
	}
}

func TestListPage(t *testing.T) {
	f, _, h := newTest(t)
	f.Add(rpc.VM{Name: "zeta", State: "suspended", Image: "minimal", IP: "172.30.0.9", VCPUs: 1, MemoryMiB: 512})
	w := do(t, h, request{method: "GET", target: "/"})
	if w.Code != 200 {
		t.Fatalf("GET / = %d, want 200: %s", w.Code, w.Body)
	}
	body := w.Body.String()
	mustContain(t, body,
		`<a href="/vms/alpha">alpha</a>`, `badge-running">running`, `badge-stopped">stopped`,
		"172.30.0.3", "512M", `action="/vms/alpha/stop"`, `action="/vms/beta/start"`,
		`action="/vms/alpha/suspend"`, `badge-stopped">suspended`, `action="/vms/zeta/start"><button class="primary" title="Restore it from its saved memory, processes and all">Resume`,
		`action="/vms/alpha/delete"`, `name="force"`, `<option value="minimal">minimal</option>`,
		`action="/vms"`, `name="disk_size"`)
	if strings.Index(body, "alpha") > strings.Index(body, "beta") {
		t.Errorf("VMs not sorted by name")
	}
	for k, want := range map[string]string{
		"X-Frame-Options": "DENY", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
		"Content-Type": "text/html; charset=utf-8",
	} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if got := w.Header().Get("Content-Security-Policy"); !strings.Contains(got, "script-src 'self';") || strings.Contains(got, "unsafe") {
		t.Errorf("CSP = %q, want script-src 'self' without unsafe-*", got)
	}
}

func TestListJSON(t *testing.T) {
	_, _, h := newTest(t)
	w := do(t, h, request{method: "GET", target: "/", json: true})
	vms := decode[[]rpc.VM](t, w)
	var names []string
	for _, vm := range vms {
		names = append(names, vm.Name)
	}
	if !slices.Equal(names, []string{"alpha", "beta"}) {
		t.Errorf("GET / JSON names = %v, want [alpha beta]", names)
	}
}

func TestDaemonDownShowsError(t *testing.T) {
	s, err := New(rpc.NewClient(filepath.Join(t.TempDir(), "none.sock")), Options{Log: quiet, Owner: testOwner})
	if err != nil {
		t.Fatal(err)
	}
	w := do(t, s.Handler(), request{method: "GET", target: "/"})
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "flash-error") || !strings.Contains(w.Body.String(), "listing vms") {
		t.Errorf("GET / with bangerd down = %d, want 502 with the error in a flash box:\n%s", w.Code, w.Body)
	}
}

// pollOp polls an operation's JSON until it is done.
func pollOp(t *testing.T, h http.Handler, loc string) opView {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w := do(t, h, request{method: "GET", target: loc, json: true})
		if w.Code != 200 {
			t.Fatalf("GET %s = %d: %s", loc, w.Code, w.Body)
		}
		v := decode[opView](t, w)
		if v.Done {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s never finished: %+v", loc, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCreateOp(t *testing.T) {
	f, s, h := newTest(t)
	release := f.Hold("web1")
	// Over real HTTP on loopback, as a browser would; the kernel says who
	// the peer is.
	base, cl := serve(t, s)
	form := url.Values{"name": {"web1"}, "image": {"minimal"}, "vcpus": {"4"}, "memory": {"2G"}, "disk_size": {"16G"}, "nat": {"on"}}
	req, _ := http.NewRequest("POST", base+"/vms", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/ops/") {
		t.Fatalf("POST /vms = %d Location %q, want 303 to /ops/ID", resp.StatusCode, loc)
	}

	// While it runs: the page refreshes itself without JS and is not cached.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err = cl.Get(base + loc)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "kernel up") {
			mustContain(t, string(b), `<noscript><meta http-equiv="refresh" content="1"></noscript>`, `data-done="false"`,
				`class="stage-done"><span class="stage-name">prepare</span> <span class="stage-time">0.4s`,
				`class="stage-running"><span class="stage-name">boot`, `<script src="/static/app.js">`)
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("op page Cache-Control = %q, want no-store", cc)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("op page never showed the running boot:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	w := do(t, h, request{method: "GET", target: "/", json: false})
	mustContain(t, w.Body.String(), "In progress", `href="`+loc+`"`, "Creating web1")

	release()
	v := pollOp(t, h, loc)
	if v.State != "done" || v.Error != "" || v.VM == nil || v.VM.State != "running" || v.VMURL != "/vms/web1" {
		t.Errorf("finished op = %+v, want done with running vm web1", v)
	}
	want := []opStage{{Name: "prepare", State: "done", DurationMS: 400}, {Name: "boot", State: "done", DurationMS: 3100}}
	if !slices.Equal(v.Stages, want) {
		t.Errorf("op stages = %+v, want %+v", v.Stages, want)
	}
	if creates := f.Creates(); len(creates) != 1 || !reflect.DeepEqual(creates[0], rpc.CreateRequest{Name: "web1", Image: "minimal", VCPUs: 4, MemoryMiB: 2048, DiskSize: "16G", NAT: true}) {
		t.Errorf("create requests = %+v", creates)
	}
	w = do(t, h, request{method: "GET", target: loc})
	body := w.Body.String()
	mustContain(t, body, `data-done="true"`, `href="/vms/web1"`)
	if strings.Contains(body, "http-equiv") {
		t.Errorf("finished op page still refreshes itself")
	}
}

func TestCreateOpError(t *testing.T) {
	_, _, h := newTest(t)
	w := do(t, h, request{method: "POST", target: "/vms", form: url.Values{"name": {"alpha"}}, json: true})
	if w.Code != http.StatusAccepted {
		t.Fatalf("POST /vms JSON = %d, want 202: %s", w.Code, w.Body)
	}
	v := pollOp(t, h, decode[opView](t, w).URL)
	if v.State != "error" || !strings.Contains(v.Error, "creating vm alpha: a VM named alpha already exists") {
		t.Errorf("op = %+v, want error naming the existing vm", v)
	}
	w = do(t, h, request{method: "GET", target: v.URL})
	mustContain(t, w.Body.String(), `class="flash flash-error">creating vm alpha`)
}

func TestCreateFormErrors(t *testing.T) {
	_, _, h := newTest(t)
	for _, tc := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"name": {" "}}, "needs a name"},
		{url.Values{"name": {"x"}, "vcpus": {"-1"}}, "vCPUs must be a positive whole number"},
		{url.Values{"name": {"x"}, "memory": {"lots"}}, `memory "lots" is not a size`},
		{url.Values{"name": {"x"}, "publish": {"8080:80 80"}}, `invalid port spec "80"`},
		{url.Values{"name": {"x"}, "publish": {"8080:80, 0.0.0.0:8080:81"}}, "both take host port 8080/tcp"},
	} {
		w := do(t, h, request{method: "POST", target: "/vms", form: tc.form})
		fl := flashOf(t, w)
		if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/" || fl == nil || fl.Kind != "error" || !strings.Contains(fl.Message, tc.want) {
			t.Errorf("POST /vms %v = %d %q flash %+v, want 303 to / with %q", tc.form, w.Code, w.Header().Get("Location"), fl, tc.want)
		}
		w = do(t, h, request{method: "POST", target: "/vms", form: tc.form, json: true})
		if w.Code != http.StatusBadRequest || !strings.Contains(decode[map[string]string](t, w)["error"], tc.want) {
			t.Errorf("POST /vms %v JSON = %d %s, want 400 with %q", tc.form, w.Code, w.Body, tc.want)
		}
	}
}

func TestStartOp(t *testing.T) {
	f, _, h := newTest(t)
	w := do(t, h, request{method: "POST", target: "/vms/beta/start", form: url.Values{}})
	loc := w.Header().Get("Location")
	if w.Code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ops/") {
		t.Fatalf("POST start = %d %q, want 303 to /ops/ID", w.Code, loc)
	}
	if v := pollOp(t, h, loc); v.State != "done" || v.Kind != "start" || len(v.Stages) != 2 {
		t.Errorf("start op = %+v", v)
	}
	if vm, _ := f.VM("beta"); vm.State != "running" {
		t.Errorf("beta state = %s, want running", vm.State)
	}
	w = do(t, h, request{method: "GET", target: "/ops/nosuchop"})
	if w.Code != 404 || !strings.Contains(w.Body.String(), "operation nosuchop: not found") {
		t.Errorf("GET unknown op = %d %s", w.Code, w.Body)
	}
}

func TestStopDeleteNAT(t *testing.T) {
	f, _, h := newTest(t)

	w := do(t, h, request{method: "POST", target: "/vms/alpha/stop", form: url.Values{"back": {"/vms/alpha"}}})
	fl := flashOf(t, w)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/vms/alpha" || fl == nil || *fl != (flash{"ok", "alpha stopped"}) {
		t.Errorf("POST stop = %d %q flash %+v, want 303 back with alpha stopped", w.Code, w.Header().Get("Location"), fl)
	}
	// The next page shows the flash once.
	w = do(t, h, request{method: "GET", target: "/", cookies: w.Result().Cookies()})
	mustContain(t, w.Body.String(), `<div class="flash flash-ok" role="status">alpha stopped</div>`, `badge-stopped">stopped`)

	f.Add(rpc.VM{Name: "delta", State: "running"})
	w = do(t, h, request{method: "POST", target: "/vms/delta/suspend", form: url.Values{"back": {"/"}}})
	if fl := flashOf(t, w); w.Code != http.StatusSeeOther || fl == nil || *fl != (flash{"ok", "delta suspended"}) {
		t.Errorf("POST suspend = %d flash %+v, want 303 with delta suspended", w.Code, fl)
	}
	if vm, _ := f.VM("delta"); vm.State != "suspended" {
		t.Errorf("after POST suspend delta is %s, want suspended", vm.State)
	}

	f.Add(rpc.VM{Name: "gamma", State: "running"})
	w = do(t, h, request{method: "POST", target: "/vms/gamma/delete", form: url.Values{}})
	if fl := flashOf(t, w); fl == nil || fl.Kind != "error" || !strings.Contains(fl.Message, `deleting vm gamma: vm gamma is running: stop it first, or tick "force"`) {
		t.Errorf("delete of a running vm without force: flash %+v", fl)
	}
	if _, ok := f.VM("gamma"); !ok {
		t.Fatalf("gamma was deleted without force")
	}
	w = do(t, h, request{method: "POST", target: "/vms/gamma/delete", form: url.Values{"force": {"on"}, "back": {"/vms/gamma"}}})
	if fl := flashOf(t, w); w.Header().Get("Location") != "/" || fl == nil || fl.Message != "gamma deleted" {
		t.Errorf("forced delete = %q flash %+v, want 303 to / with gamma deleted", w.Header().Get("Location"), fl)
	}
	if _, ok := f.VM("gamma"); ok {
		t.Errorf("gamma survived a forced delete")
	}
	w = do(t, h, request{method: "POST", target: "/vms/beta/delete", form: url.Values{}, json: true})
	if res := decode[actionResult](t, w); !res.OK || res.Message != "beta deleted" {
		t.Errorf("JSON delete of stopped beta = %+v", res)
	}
	w = do(t, h, request{method: "POST", target: "/vms/nosuch/stop", form: url.Values{}, json: true})
	if w.Code != 404 || !strings.Contains(w.Body.String(), "stopping vm nosuch: no VM named nosuch") {
		t.Errorf("stop of an unknown vm = %d %s, want 404", w.Code, w.Body)
	}

	w = do(t, h, request{method: "POST", target: "/vms/alpha/nat", form: url.Values{"nat": {"off"}, "back": {"//evil.example/"}}})
	if fl := flashOf(t, w); w.Header().Get("Location") != "/" || fl == nil || fl.Message != "alpha: NAT off" {
		t.Errorf("POST nat off = %q flash %+v, want 303 to / (not the foreign back) with NAT off", w.Header().Get("Location"), fl)
	}
	if vm, _ := f.VM("alpha"); vm.NAT {
		t.Errorf("alpha still has NAT")
	}
}

// A console log far past what the page reads shows its real last lines,
// and only its tail is read.
func TestVMPageReadsTheConsoleTail(t *testing.T) {
	f, _, h := newTest(t)
	var b strings.Builder
	for i := 0; b.Len() < 8*consoleTailBytes; i++ {
		fmt.Fprintf(&b, "filler %d\n", i)
	}
	for i := range 5 {
		fmt.Fprintf(&b, "the end %d\n", i)
	}
	f.SetConsole("alpha", b.String())
	w := do(t, h, request{method: "GET", target: "/vms/alpha", json: true})
	j := decode[vmJSON](t, w)
	if n := len(j.Console); n != consoleLines || j.Console[n-1] != "the end 4" || j.Console[n-5] != "the end 0" {
		t.Errorf("console of a %d-byte log = %d lines ending %q, want %d ending with the end 0-4", b.Len(), n, j.Console[max(n-5, 0):], consoleLines)
	}
	if got := f.ConsoleBytesServed(); got > consoleTailBytes {
		t.Errorf("the VM page read %d bytes of a %d-byte console log, want at most %d", got, b.Len(), consoleTailBytes)
	}
}

func TestVMPage(t *testing.T) {
	f, _, h := newTest(t)
	f.Add(rpc.VM{Name: "shared", State: "running", Mounts: []rpc.Mount{{Host: "/home/dev/<src>", Guest: "/root/src"}, {Host: "/srv/docs", Guest: "/srv/docs", ReadOnly: true}}})
	w := do(t, h, request{method: "GET", target: "/vms/shared"})
	mustContain(t, w.Body.String(), "/home/dev/&lt;src&gt; &rarr; /root/src (read-write)", "/srv/docs &rarr; /srv/docs (read-only)")
	var b strings.Builder
	for i := range 300 {
		fmt.Fprintf(&b, "line %d\r\n", i)
	}
	b.WriteString("\x1b[1;32mOK\x1b[0m <script>alert(1)</script>")
	f.SetConsole("alpha", b.String())
	w = do(t, h, request{method: "GET", target: "/vms/alpha"})
	if w.Code != 200 {
		t.Fatalf("GET /vms/alpha = %d: %s", w.Code, w.Body)
	}
	body := w.Body.String()
	mustContain(t, body, `value="banger vm ssh alpha"`, "preparing disks", "1.1s", "total", "1.4s",
		"(last 200 lines)", "OK &lt;script&gt;alert(1)&lt;/script&gt;", "line 101\n", `action="/vms/alpha/stop"`, `value="/vms/alpha"`)
	// The opencode password stays out of the web UI.
	if strings.Contains(body, "pw-alpha") {
		t.Errorf("the VM page shows the opencode password")
	}
	if strings.Contains(body, "line 100\n") || strings.Contains(body, "\x1b") || strings.Contains(body, "\r") {
		t.Errorf("console tail kept more than 200 lines or escape sequences")
	}
	w = do(t, h, request{method: "GET", target: "/vms/alpha", json: true})
	j := decode[vmJSON](t, w)
	if j.VM.Name != "alpha" || j.SSHCommand != "banger vm ssh alpha" || len(j.Console) != 200 {
		t.Errorf("VM JSON = %+v", j)
	}
	w = do(t, h, request{method: "GET", target: "/vms/nosuch"})
	if w.Code != 404 || !strings.Contains(w.Body.String(), "showing vm nosuch") {
		t.Errorf("GET unknown vm = %d %s", w.Code, w.Body)
	}
}

func TestHostCheck(t *testing.T) {
	_, _, h := newTest(t)
	for _, tc := range []struct {
		host string
		want int
	}{
		{"127.0.0.1:7777", 200}, {"localhost:7777", 200}, {"localhost", 200}, {"LOCALHOST.:80", 200},
		{"[::1]:7777", 200}, {"[::1]", 200}, {"127.0.0.2:7777", 200},
		{"evil.example", 421}, {"evil.example:7777", 421}, {"127.0.0.1.evil.example", 421},
		{"localhost.evil.example", 421}, {"10.0.0.1:7777", 421}, {"none", 421}, {"[fe80::1%25lo]", 421},
	} {
		w := do(t, h, request{method: "GET", target: "/", host: tc.host})
		if w.Code != tc.want {
			t.Errorf("GET / with Host %q = %d, want %d", tc.host, w.Code, tc.want)
		}
		if tc.want == 421 && !strings.Contains(w.Body.String(), "answers only to 127.0.0.1, localhost or [::1]") {
			t.Errorf("rejection of Host %q does not say why: %s", tc.host, w.Body)
		}
	}
	// A foreign Host cannot change anything either.
	w := do(t, h, request{method: "POST", target: "/vms/alpha/stop", host: "evil.example", origin: ptr("http://evil.example"), form: url.Values{}})
	if w.Code != 421 {
		t.Errorf("POST with Host evil.example = %d, want 421", w.Code)
	}
}

func TestCSRF(t *testing.T) {
	f, _, h := newTest(t)
	for _, tc := range []struct {
		name            string
		origin, referer string
		want            int
	}{
		{"foreign origin", "http://evil.example", "", 403},
		{"other port", "http://127.0.0.1:8080", "", 403},
		{"null origin", "null", "", 403},
		{"foreign referer", "", "http://evil.example/page", 403},
		{"no origin nor referer", "", "", 403},
		{"foreign origin with same referer", "http://evil.example", "http://" + testHost + "/", 403},
		{"same origin", "http://" + testHost, "", 303},
		{"same referer", "", "http://" + testHost + "/vms/beta", 303},
	} {
		w := do(t, h, request{method: "POST", target: "/vms/beta/nat", form: url.Values{"nat": {"on"}}, origin: ptr(tc.origin), referer: tc.referer})
		if w.Code != tc.want {
			t.Errorf("%s: POST nat = %d, want %d: %s", tc.name, w.Code, tc.want, w.Body)
		}
		if tc.want == 403 {
			if vm, _ := f.VM("beta"); vm.NAT {
				t.Fatalf("%s: the refused request changed beta", tc.name)
			}
			if !strings.Contains(w.Body.String(), "refusing POST /vms/beta/nat") {
				t.Errorf("%s: refusal does not say why: %s", tc.name, w.Body)
			}
		}
	}
}

func TestMethods(t *testing.T) {
	_, _, h := newTest(t)
	for _, tc := range []struct {
		method, target string
		want           int
	}{
		{"POST", "/", 405}, {"GET", "/vms/alpha/stop", 405}, {"GET", "/vms/alpha/start", 405},
		{"GET", "/vms/alpha/delete", 405}, {"GET", "/vms/alpha/nat", 405}, {"GET", "/vms", 405},
		{"GET", "/images/x/delete", 405}, {"POST", "/files", 405}, {"POST", "/ops/x", 405},
		{"POST", "/vms/alpha", 405}, {"DELETE", "/vms/alpha", 405}, {"PUT", "/images", 405},
		{"POST", "/static/app.css", 405}, {"GET", "/nosuch", 404}, {"GET", "/static/", 404},
		{"GET", "/images", 200}, {"HEAD", "/", 200},
	} {
		w := do(t, h, request{method: tc.method, target: tc.target, form: url.Values{}})
		if w.Code != tc.want {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.target, w.Code, tc.want)
		}
	}
}

func TestStatic(t *testing.T) {
	_, _, h := newTest(t)
	for _, tc := range []struct{ path, ctype, want string }{
		{"/static/app.js", "text/javascript; charset=utf-8", "fetch(url"},
		{"/static/app.css", "text/css; charset=utf-8", ".badge"},
	} {
		w := do(t, h, request{method: "GET", target: tc.path})
		if w.Code != 200 || w.Header().Get("Content-Type") != tc.ctype || !strings.Contains(w.Body.String(), tc.want) {
			t.Errorf("GET %s = %d %q, want 200 %q", tc.path, w.Code, w.Header().Get("Content-Type"), tc.ctype)
		}
	}
}

func TestFilePicker(t *testing.T) {
	_, s, h := newTest(t)
	dir := s.FileRoots[0]
	other := t.TempDir() // a second root, as banger's data dir is
	outside := t.TempDir()
	s.FileRoots = append(s.FileRoots, other)
	for _, p := range []string{dir + "/rootfs.ext4", dir + "/seed.IMG", dir + "/notes.txt", dir + "/sub/deep.ext4",
		other + "/built.ext4", outside + "/secret.ext4"} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(filepath.Join(dir, "sub"), filepath.Join(dir, "link"))
	os.Symlink(other, filepath.Join(dir, "to-other-root"))
	os.Symlink(outside, filepath.Join(dir, "out"))
	os.Symlink(outside+"/secret.ext4", filepath.Join(dir, "out.ext4"))

	names := func(es []fileEntry) []string {
		var got []string
		for _, e := range es {
			got = append(got, e.Name)
		}
		return got
	}
	// The picker starts in the first root and offers every root; links out
	// of the roots are not listed.
	w := do(t, h, request{method: "GET", target: "/files", json: true})
	if w.Code != 200 {
		t.Fatalf("GET /files = %d: %s", w.Code, w.Body)
	}
	v := decode[filesPage](t, w)
	if want := []string{"link", "sub", "to-other-root", "rootfs.ext4", "seed.IMG"}; !slices.Equal(names(v.Entries), want) || v.Dir != dir {
		t.Errorf("picker = %v in %s, want %v in %s", names(v.Entries), v.Dir, want, dir)
	}
	if got := names(v.Roots); !slices.Equal(got, []string{dir, other}) {
		t.Errorf("picker roots = %v, want %v", got, []string{dir, other})
	}
	if v.Parent != "" {
		t.Errorf("the picker offers %s, above its root", v.Parent)
	}
	if v := decode[filesPage](t, do(t, h, request{method: "GET", target: "/files?dir=" + url.QueryEscape(other), json: true})); !slices.Equal(names(v.Entries), []string{"built.ext4"}) {
		t.Errorf("picker of the second root = %v", names(v.Entries))
	}
	if v := decode[filesPage](t, do(t, h, request{method: "GET", target: "/files?dir=" + url.QueryEscape(dir+"/sub"), json: true})); v.Parent != dir {
		t.Errorf("picker of %s/sub has parent %q, want %s", dir, v.Parent, dir)
	}

	// The HTML page carries the form's values through, and choosing fills the field.
	q := url.Values{"dir": {dir + "//./"}, "field": {"work_seed"}, "name": {"mine"}, "rootfs": {"/a/r.ext4"}}
	w = do(t, h, request{method: "GET", target: "/files?" + q.Encode()})
	choose := "/images?" + url.Values{"name": {"mine"}, "rootfs": {"/a/r.ext4"}, "work_seed": {filepath.Join(dir, "seed.IMG")}}.Encode()
	mustContain(t, w.Body.String(), "Choose the work seed", `href="`+strings.ReplaceAll(choose, "&", "&amp;")+`"`, "sub/</a>", "Start in:")

	// Starting from the field's current value opens its directory.
	q = url.Values{"field": {"rootfs"}, "rootfs": {filepath.Join(dir, "sub", "deep.ext4")}}
	if v := decode[filesPage](t, do(t, h, request{method: "GET", target: "/files?" + q.Encode(), json: true})); v.Dir != filepath.Join(dir, "sub") {
		t.Errorf("picker started in %s, want %s", v.Dir, filepath.Join(dir, "sub"))
	}

	for _, tc := range []struct {
		dir  string
		code int
		want string
	}{
		{"relative/dir", 400, "needs an absolute path"},
		{dir + "/sub/../..", 400, `paths with \"..\" are refused`},
		{"/", 400, "stays inside " + dir + " and " + other},
		{"/etc", 400, "stays inside"},
		{outside, 400, "stays inside"},
		{dir + "/link", 200, ""},
		{dir + "/to-other-root", 200, ""},
		{dir + "/out", 400, "outside the directories the web UI may use"},
		{dir + "/nosuch", 404, "no such file or directory"},
		{dir + "/notes.txt", 400, "not a directory"},
	} {
		w := do(t, h, request{method: "GET", target: "/files?" + url.Values{"dir": {tc.dir}}.Encode(), json: true})
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.want) {
			t.Errorf("GET /files?dir=%s = %d %s, want %d with %q", tc.dir, w.Code, w.Body, tc.code, tc.want)
		}
	}
	w = do(t, h, request{method: "GET", target: "/files?dir=relative"})
	mustContain(t, w.Body.String(), `class="flash flash-error" role="alert">listing &#34;relative&#34;: the file picker needs an absolute path`)

	// Without roots there is no picker.
	s.FileRoots = nil
	w = do(t, h, request{method: "GET", target: "/files", json: true})
	if w.Code != 400 || !strings.Contains(w.Body.String(), "set web_file_roots") {
		t.Errorf("GET /files without roots = %d %s, want 400 naming web_file_roots", w.Code, w.Body)
	}
	if body := do(t, h, request{method: "GET", target: "/images"}).Body.String(); strings.Contains(body, "Browse…") {
		t.Errorf("the images page offers a picker without roots")
	}
}

// TestFilePickerUnreadable needs a user whom permissions bind: root reads
// everything (test/e2e's TestWebUIUserDaemon proves it for a user daemon).
func TestFilePickerUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file; test/e2e TestWebUIUserDaemon checks this as a plain user")
	}
	_, s, h := newTest(t)
	dir := s.FileRoots[0]
	os.WriteFile(dir+"/mine.ext4", []byte("x"), 0o600)
	os.WriteFile(dir+"/locked.ext4", []byte("x"), 0o000)
	os.Mkdir(dir+"/closed", 0o000)
	defer os.Chmod(dir+"/closed", 0o700)
	v := decode[filesPage](t, do(t, h, request{method: "GET", target: "/files", json: true}))
	var got []string
	for _, e := range v.Entries {
		got = append(got, e.Name)
	}
	if !slices.Equal(got, []string{"mine.ext4"}) {
		t.Errorf("picker lists %v, want only the readable mine.ext4", got)
	}
	if w := do(t, h, request{method: "GET", target: "/files?dir=" + url.QueryEscape(dir+"/closed"), json: true}); w.Code != 403 {
		t.Errorf("picker of an unreadable directory = %d %s, want 403", w.Code, w.Body)
	}
	w := do(t, h, request{method: "POST", target: "/images", form: url.Values{"name": {"x"}, "rootfs": {dir + "/locked.ext4"}}, json: true})
	if w.Code != 400 || !strings.Contains(w.Body.String(), "permission denied") {
		t.Errorf("register of an unreadable file = %d %s, want 400 permission denied", w.Code, w.Body)
	}
}

func TestImages(t *testing.T) {
	f, s, h := newTest(t)
	dir := s.FileRoots[0]
	for _, p := range []string{"r.ext4", "s.ext4"} {
		if err := ext4.WriteMagic(filepath.Join(dir, p), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "r.qcow2"), []byte("QFI\xfb"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(dir+"/d.ext4", 0o755)
	outside := t.TempDir()
	os.WriteFile(outside+"/o.ext4", []byte("x"), 0o644)
	os.Symlink(outside+"/o.ext4", dir+"/link.ext4")
	if err := unix.Mkfifo(dir+"/fifo.ext4", 0o644); err != nil {
		t.Fatal(err)
	}

	w := do(t, h, request{method: "GET", target: "/images?name=mine&rootfs=/x/r.ext4"})
	mustContain(t, w.Body.String(), "/rt/rootfs-docker.ext4", `name="name" value="mine"`, `value="/x/r.ext4"`,
		`formaction="/files" formmethod="get"`, `name="field" value="work_seed"`, `action="/images/build"`,
		`<option value="minimal">minimal</option>`)
	if strings.Contains(w.Body.String(), `action="/images/docker/delete"`) {
		t.Errorf("a bundle image offers delete")
	}
	if imgs := decode[[]rpc.Image](t, do(t, h, request{method: "GET", target: "/images", json: true})); len(imgs) != 2 {
		t.Errorf("images JSON = %+v", imgs)
	}

	w = do(t, h, request{method: "POST", target: "/images", form: url.Values{"name": {"mine"}, "rootfs": {dir + "/./r.ext4"}, "work_seed": {dir + "/s.ext4"}}})
	if fl := flashOf(t, w); w.Header().Get("Location") != "/images" || fl == nil || fl.Message != "image mine registered" {
		t.Errorf("register = %q flash %+v", w.Header().Get("Location"), fl)
	}
	real, _ := filepath.EvalSymlinks(dir)
	if registers := f.Registers(); len(registers) != 1 || registers[0] != (rpc.RegisterImageRequest{Name: "mine", Rootfs: real + "/r.ext4", WorkSeed: real + "/s.ext4"}) {
		t.Errorf("register requests = %+v", registers)
	}
	for _, tc := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"name": {"rel"}, "rootfs": {"r.ext4"}}, "needs an absolute path"},
		{url.Values{"name": {"bad"}, "rootfs": {dir + "/r.qcow2"}}, "registering image bad: --rootfs " + real + "/r.qcow2: is not an ext4 filesystem image"},
		{url.Values{"rootfs": {dir + "/r.ext4"}}, "it needs a name"},
		{url.Values{"name": {"out"}, "rootfs": {outside + "/o.ext4"}}, "stays inside " + dir},
		{url.Values{"name": {"etc"}, "rootfs": {"/etc/passwd"}}, "stays inside " + dir},
		{url.Values{"name": {"link"}, "rootfs": {dir + "/link.ext4"}}, "outside the directories the web UI may use"},
		{url.Values{"name": {"none"}, "rootfs": {dir + "/none.ext4"}}, "no such file"},
		{url.Values{"name": {"dir"}, "rootfs": {dir + "/d.ext4"}}, "not a regular file"},
		{url.Values{"name": {"fifo"}, "rootfs": {dir + "/fifo.ext4"}}, "not a regular file"},
		{url.Values{"name": {"seed"}, "rootfs": {dir + "/r.ext4"}, "work_seed": {"/etc/shadow"}}, "--work-seed /etc/shadow: the web UI stays inside"},
	} {
		start := time.Now()
		w = do(t, h, request{method: "POST", target: "/images", form: tc.form})
		fl := flashOf(t, w)
		loc, _ := url.Parse(w.Header().Get("Location"))
		if fl == nil || fl.Kind != "error" || !strings.Contains(fl.Message, tc.want) || loc.Query().Get("rootfs") != tc.form.Get("rootfs") {
			t.Errorf("register %v = %s flash %+v, want %q and the values kept", tc.form, loc, fl, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("register %v took %s", tc.form, d)
		}
	}
	if registers := f.Registers(); len(registers) != 2 {
		t.Errorf("bangerd got %d register requests, want 2 (mine, then bad, which it refused): %+v", len(registers), registers)
	}

	w = do(t, h, request{method: "GET", target: "/images"})
	mustContain(t, w.Body.String(), `action="/images/mine/delete"`)
	w = do(t, h, request{method: "POST", target: "/images/mine/delete", form: url.Values{}})
	if fl := flashOf(t, w); fl == nil || fl.Kind != "ok" {
		t.Errorf("delete image flash = %+v", fl)
	}
	if _, ok := f.Image("mine"); ok {
		t.Errorf("image mine survived delete")
	}
	w = do(t, h, request{method: "POST", target: "/images/mine/delete", form: url.Values{}, json: true})
	if w.Code != 404 {
		t.Errorf("delete of an unknown image = %d, want 404", w.Code)
	}
}

func TestTemplateErrors(t *testing.T) {
	pages := fstest.MapFS{}
	fs.WalkDir(templateFS, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := templateFS.ReadFile(p)
			pages[p] = &fstest.MapFile{Data: b}
		}
		return err
	})
	broken := fstest.MapFS{}
	for k, v := range pages {
		broken[k] = v
	}
	broken["templates/vm.html"] = &fstest.MapFile{Data: []byte(`{{define "content"}}{{if}}{{end}}`)}
	if _, err := newServer(nil, Options{}, broken); err == nil || !strings.Contains(err.Error(), "parsing web template vm") {
		t.Errorf("newServer with a template that does not parse = %v, want an error naming it", err)
	}

	// A template that parses but fails while rendering gives a clean 500.
	pages["templates/vms.html"] = &fstest.MapFile{Data: []byte(`{{define "content"}}<p>half a page{{.NoSuchField}}{{end}}`)}
	s, err := newServer(rpctest.Start(t).Client(), Options{Log: quiet, Owner: testOwner}, pages)
	if err != nil {
		t.Fatal(err)
	}
	w := do(t, s.Handler(), request{method: "GET", target: "/"})
	if w.Code != 500 || strings.Contains(w.Body.String(), "half a page") || !strings.Contains(w.Body.String(), "rendering the vms page failed") {
		t.Errorf("GET / with a failing template = %d %q, want a clean 500", w.Code, w.Body)
	}
}

func TestZeroServerWorks(t *testing.T) {
	// A Server{} belongs to root (uid 0), and has no file picker.
	s := &Server{Client: rpctest.Start(t).Client()}
	if w := do(t, s.Handler(), request{method: "GET", target: "/images", peer: ptr(0)}); w.Code != 200 {
		t.Errorf("GET /images on a Server{} = %d, want 200: %s", w.Code, w.Body)
	}
	if w := do(t, s.Handler(), request{method: "GET", target: "/images", peer: ptr(1000)}); w.Code != 403 {
		t.Errorf("GET /images on a Server{} from uid 1000 = %d, want 403: %s", w.Code, w.Body)
	}
}

func TestLoopbackHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"127.0.0.1", true}, {"127.0.0.1:1", true}, {"localhost", true}, {"LocalHost:7777", true},
		{"localhost.", true}, {"[::1]:7777", true}, {"::1", true}, {"[::ffff:127.0.0.1]:80", true},
		{"", false}, {"evil.example", false}, {"127.0.0.1.nip.io", false}, {"0.0.0.0:7777", false},
		{"[::]:7777", false}, {"192.168.1.2", false}, {"localhost:7777:1", false},
	} {
		if got := loopbackHost(tc.host); got != tc.want {
			t.Errorf("loopbackHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestLocalPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/vms/a", "/vms/a"}, {"/images?name=x", "/images?name=x"}, {"", "/"}, {"//evil.example/", "/"},
		{"/\\evil.example", "/"}, {"http://evil.example/", "/"}, {"vms/a", "/"}, {"javascript:alert(1)", "/"},
	} {
		if got := localPath(tc.in, "/"); got != tc.want {
			t.Errorf("localPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestWantsJSON(t *testing.T) {
	for _, tc := range []struct {
		accept string
		want   bool
	}{
		{"application/json", true}, {"text/html, Application/JSON;q=0.9", true},
		{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", false}, {"", false},
		{"application/jsonx", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Accept", tc.accept)
		if got := wantsJSON(r); got != tc.want {
			t.Errorf("wantsJSON(%q) = %v, want %v", tc.accept, got, tc.want)
		}
	}
}

func TestCleanConsole(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"}, {"\x1b[1;32mOK\x1b[0m done", "OK done"}, {"a\rb", "ab"},
		{"\x1b]0;title\x07rest", "rest"}, {"tab\there", "tab\there"}, {"bad\xffbyte", "bad\uFFFDbyte"},
		{"bell\x07\x00", "bell"}, {"c1\u009bx", "c1x"}, {"\x1bc reset", " reset"},
	} {
		if got := cleanConsole(tc.in); got != tc.want {
			t.Errorf("cleanConsole(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTailWriter(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		want   []string
	}{
		{[]string{"a\nb\nc\nd\n"}, []string{"b", "c", "d"}},
		{[]string{"a\nb", "c\nd"}, []string{"a", "bc", "d"}},
		{[]string{"one"}, []string{"one"}},
		{[]string{"a\nb\nc\nd"}, []string{"b", "c", "d"}},
		{[]string{"", "\n"}, []string{""}},
	} {
		tw := newTailWriter(3)
		for _, s := range tc.writes {
			tw.Write([]byte(s))
		}
		if got := tw.Lines(); !slices.Equal(got, tc.want) {
			t.Errorf("tail(3) of %q = %q, want %q", tc.writes, got, tc.want)
		}
	}
	tw := newTailWriter(2)
	tw.Write([]byte(strings.Repeat("x", 10000) + "\n"))
	if got := tw.Lines(); len(got) != 1 || len(got[0]) != 4096 {
		t.Errorf("a 10000-byte line is kept as %d bytes, want 4096", len(got[0]))
	}
}

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"testbox", "testbox"}, {"a-b.c_1", "a-b.c_1"}, {"", "''"}, {"a b", "'a b'"}, {"it's", `'it'\''s'`}, {"$(x)", "'$(x)'"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestOpTablePrunes(t *testing.T) {
	tbl := newOpTable()
	first := tbl.add("create", "a")
	tbl.finish(first, opResult{}, nil)
	running := tbl.add("start", "b")
	for range opMax + 10 {
		o := tbl.add("create", "x")
		tbl.finish(o, opResult{}, nil)
	}
	if len(tbl.ops) > opMax {
		t.Errorf("op table holds %d ops, want at most %d", len(tbl.ops), opMax)
	}
	if _, ok := tbl.view(first.id); ok {
		t.Errorf("the oldest finished op was kept")
	}
	if _, ok := tbl.view(running.id); !ok {
		t.Errorf("a running op was pruned")
	}
}

// TestPortsAndWorkSize: the list and the VM page show a VM's published
// ports and its /root disk, and the create form takes both.
func TestPortsAndWorkSize(t *testing.T) {
	f, _, h := newTest(t)
	f.Add(rpc.VM{Name: "gamma", State: "running", WorkSizeBytes: 16 << 30, Ports: []rpc.Port{
		{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 18080, GuestPort: 80}, {Proto: "udp", HostIP: "0.0.0.0", HostPort: 15353, GuestPort: 53}}})
	w := do(t, h, request{method: "GET", target: "/"})
	mustContain(t, w.Body.String(), "<th>Ports</th>", "127.0.0.1:18080 -&gt; 80/tcp<br>0.0.0.0:15353 -&gt; 53/udp", `name="work_size"`, `name="publish"`)
	w = do(t, h, request{method: "GET", target: "/vms/gamma"})
	mustContain(t, w.Body.String(), "<dt>/root disk</dt><dd>16G</dd>",
		`<div class="mono port">127.0.0.1:18080 -&gt; 80/tcp <span class="muted">listening</span></div>`)
	w = do(t, h, request{method: "GET", target: "/vms/alpha"})
	mustContain(t, w.Body.String(), "none published")
	w = do(t, h, request{method: "GET", target: "/vms/gamma", json: true})
	if j := decode[vmJSON](t, w); len(j.VM.Ports) != 2 || !j.VM.Ports[0].Listening || j.VM.WorkSizeBytes != 16<<30 {
		t.Errorf("VM JSON ports = %+v, work size %d", j.VM.Ports, j.VM.WorkSizeBytes)
	}

	form := url.Values{"name": {"delta"}, "work_size": {"64G"}, "publish": {"18081:80,  0.0.0.0:15354:53/udp"}}
	w = do(t, h, request{method: "POST", target: "/vms", form: form, json: true})
	if w.Code != http.StatusAccepted {
		t.Fatalf("POST /vms = %d: %s", w.Code, w.Body)
	}
	pollOp(t, h, decode[opView](t, w).URL)
	want := rpc.CreateRequest{Name: "delta", WorkSize: "64G", Ports: []rpc.Port{
		{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 18081, GuestPort: 80}, {Proto: "udp", HostIP: "0.0.0.0", HostPort: 15354, GuestPort: 53}}}
	if creates := f.Creates(); len(creates) != 1 || !reflect.DeepEqual(creates[0], want) {
		t.Errorf("create requests = %+v, want [%+v]", creates, want)
	}
}
