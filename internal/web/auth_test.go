package web

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/web/login"
	"github.com/banger/banger/internal/web/peer"
)

// everything is one request to each page and action of the UI.
var everything = []struct{ method, target string }{
	{"GET", "/"}, {"HEAD", "/"}, {"GET", "/vms/alpha"}, {"GET", "/images"}, {"GET", "/files?dir=/"},
	{"GET", "/ops/x"}, {"GET", "/static/app.css"}, {"GET", "/nosuch"},
	{"POST", "/vms"}, {"POST", "/vms/alpha/stop"}, {"POST", "/vms/beta/start"}, {"POST", "/vms/alpha/delete"},
	{"POST", "/vms/beta/nat"}, {"POST", "/images"}, {"POST", "/images/docker/delete"}, {"POST", "/images/build"},
	{"POST", "/logout"},
}

// form is a valid form for every POST of everything.
var form = url.Values{"name": {"intruder"}, "image": {"minimal"}, "force": {"on"}, "nat": {"on"},
	"rootfs": {"/etc/passwd"}, "kind": {"minimal"}}

// TestOnlyTheOwner: any other local user, a peer the kernel cannot name
// and another host are refused everything, reads included, with a reason;
// nothing changes.
func TestOnlyTheOwner(t *testing.T) {
	f, _, h := newTest(t)
	for _, tc := range []struct {
		name string
		peer int
		want string
	}{
		{"another local user", testOwner + 1, fmt.Sprintf("this connection comes from uid %d", testOwner+1)},
		{"root, when root is not the owner", 0, "this connection comes from uid 0"},
		{"a peer nobody can name", unknownUID, "cannot tell which user this connection comes from"},
		{"another host", remoteUID, "this connection comes from another host"},
	} {
		if tc.peer == testOwner {
			continue // the tests run as root
		}
		for _, q := range everything {
			w := do(t, h, request{method: q.method, target: q.target, form: form, peer: ptr(tc.peer)})
			if w.Code != http.StatusForbidden || (q.method != "HEAD" && !strings.Contains(w.Body.String(), tc.want)) {
				t.Errorf("%s: %s %s = %d, want 403 saying %q: %s", tc.name, q.method, q.target, w.Code, tc.want, w.Body)
			}
			if strings.Contains(w.Body.String(), "172.30.0.2") || strings.Contains(w.Body.String(), "rootfs-docker") {
				t.Errorf("%s: %s %s shows state: %s", tc.name, q.method, q.target, w.Body)
			}
		}
	}
	if len(f.Creates()) != 0 || len(f.Registers()) != 0 {
		t.Errorf("refused requests reached bangerd: creates %v, registers %v", f.Creates(), f.Registers())
	}
	for name, want := range map[string]string{"alpha": "running", "beta": "stopped"} {
		if vm, ok := f.VM(name); !ok || vm.State != want || (name == "beta" && vm.NAT) {
			t.Errorf("vm %s = %+v after refused requests, want it %s and unchanged", name, vm, want)
		}
	}
	// The owner gets in.
	if w := do(t, h, request{method: "GET", target: "/"}); w.Code != 200 {
		t.Errorf("the owner's GET / = %d", w.Code)
	}
}

// loginTest is a UI owned by uid 4242 whose peers are who the test says:
// connections from 127.0.0.N come from uid uids[N].
type loginTest struct {
	f      *login.File
	s      *Server
	fake   *rpctest.Fake
	base   string
	client *http.Client
}

const loginOwner = 4242

func newLoginTest(t *testing.T, loginOnly bool, uids map[byte]int) *loginTest {
	t.Helper()
	fake := rpctest.Start(t)
	fake.Add(rpc.VM{Name: "beta", State: "stopped"})
	lf, err := login.Setup(filepath.Join(t.TempDir(), login.FileName), login.File{Listen: "127.0.0.1:7777"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(fake.Client(), Options{Log: quiet, Owner: loginOwner, LoginOnly: loginOnly, Login: lf,
		PeerUID: func(local, remote netip.AddrPort) (int, error) {
			if uid, ok := uids[remote.Addr().As4()[3]]; ok {
				return uid, nil
			}
			return -1, peer.ErrNotLocal
		}})
	if err != nil {
		t.Fatal(err)
	}
	base, cl := serve(t, s)
	return &loginTest{f: lf, s: s, fake: fake, base: base, client: cl}
}

// get sends a request from 127.0.0.<from>.
func (lt *loginTest) do(t *testing.T, from byte, method, path string, cookies []*http.Cookie, host string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader("nat=on")
	}
	req, _ := http.NewRequest(method, lt.base+path, body)
	if method == "POST" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", lt.base)
	}
	if host != "" {
		req.Host = host
		req.Header.Set("Origin", "http://"+host)
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, from)}}
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s from 127.0.0.%d: %v", method, path, from, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func sessionOf(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if strings.HasPrefix(c.Name, sessionCookie) && c.MaxAge > 0 {
			return c
		}
	}
	return nil
}

// TestLogin: a link from 'banger ui' logs in the browser of the user it
// was made for, once; the cookie works for that user only.
func TestLogin(t *testing.T) {
	// 127.0.0.1 is the owner; .2 is alice (1000), who ran 'sudo banger ui';
	// .3 is mallory (1001); .4 is another host.
	lt := newLoginTest(t, false, map[byte]int{1: loginOwner, 2: 1000, 3: 1001})
	now := time.Now()

	if resp, _ := lt.do(t, 1, "GET", "/", nil, ""); resp.StatusCode != 200 {
		t.Errorf("the owner without a login = %d, want 200", resp.StatusCode)
	}
	resp, body := lt.do(t, 2, "GET", "/", nil, "")
	if resp.StatusCode != 403 || !strings.Contains(body, "this connection comes from uid 1000") || !strings.Contains(body, "banger ui") {
		t.Errorf("alice before logging in = %d %s, want 403 pointing to banger ui", resp.StatusCode, body)
	}

	tok := lt.f.Token(1000, now)
	// Mallory, who saw the link in ps, cannot use it.
	resp, body = lt.do(t, 3, "GET", "/login?token="+tok, nil, "")
	if resp.StatusCode != 403 || !strings.Contains(body, "made for another user (uid 1000)") || sessionOf(resp) != nil {
		t.Errorf("mallory redeeming alice's link = %d %s, want 403", resp.StatusCode, body)
	}
	resp, body = lt.do(t, 2, "GET", "/login?token="+tok, nil, "")
	cookie := sessionOf(resp)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" || cookie == nil {
		t.Fatalf("alice's login = %d %q %s, want 303 to / with a cookie", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.Name != "banger_session_7777" {
		t.Errorf("session cookie = %+v, want HttpOnly, SameSite=Strict, Path=/, named for port 7777", cookie)
	}
	if resp, body := lt.do(t, 2, "GET", "/login?token="+tok, nil, ""); resp.StatusCode != 403 || !strings.Contains(body, "used already") {
		t.Errorf("the same link twice = %d %s, want 403 used already", resp.StatusCode, body)
	}
	jar := []*http.Cookie{cookie}
	resp, body = lt.do(t, 2, "GET", "/", jar, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `action="/logout"`) || !strings.Contains(body, "beta") {
		t.Errorf("alice with her cookie = %d, want 200 with the VM list and a log-out button: %s", resp.StatusCode, body)
	}
	if resp, _ := lt.do(t, 2, "POST", "/vms/beta/nat", jar, ""); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("alice's POST with her cookie = %d, want 303", resp.StatusCode)
	}
	if vm, _ := lt.fake.VM("beta"); !vm.NAT {
		t.Errorf("alice's change did not happen")
	}
	// A stolen cookie does not work for another user or from another host.
	for from, who := range map[byte]string{3: "uid 1001", 4: "another host"} {
		resp, body := lt.do(t, from, "GET", "/", jar, "")
		if resp.StatusCode != 403 || !strings.Contains(body, "the login cookie belongs to another user") {
			t.Errorf("alice's cookie used by %s = %d %s, want 403", who, resp.StatusCode, body)
		}
	}
	// A foreign Host is still refused in the owner mode, cookie or not.
	if resp, _ := lt.do(t, 2, "GET", "/", jar, "evil.example:7777"); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("alice's cookie with Host evil.example = %d, want 421", resp.StatusCode)
	}
	// Logging out clears the cookie.
	resp, _ = lt.do(t, 2, "POST", "/logout", jar, "")
	if resp.StatusCode != http.StatusSeeOther || sessionOf(resp) != nil || !strings.Contains(resp.Header.Get("Set-Cookie"), "Max-Age=0") {
		t.Errorf("logout = %d %v, want 303 clearing the cookie", resp.StatusCode, resp.Header["Set-Cookie"])
	}
	// A HEAD, as a link preview sends, does not use up a link.
	fresh := lt.f.Token(1000, now)
	if resp, _ := lt.do(t, 2, "HEAD", "/login?token="+fresh, nil, ""); sessionOf(resp) != nil {
		t.Errorf("HEAD /login logged in")
	}
	if resp, _ := lt.do(t, 2, "GET", "/login?token="+fresh, nil, ""); sessionOf(resp) == nil {
		t.Errorf("a link that a HEAD asked about no longer works: %d", resp.StatusCode)
	}
	for _, tc := range []struct{ name, token, want string }{
		{"expired", lt.f.Token(1000, now.Add(-login.TokenTTL-time.Second)), "expired"},
		{"garbage", "x", "not valid here"},
		{"none", "", "not valid here"},
	} {
		if resp, body := lt.do(t, 2, "GET", "/login?token="+tc.token, nil, ""); resp.StatusCode != 403 || !strings.Contains(body, tc.want) {
			t.Errorf("login with a %s token = %d %s, want 403 %q", tc.name, resp.StatusCode, body, tc.want)
		}
	}
}

// TestLoginOnly: with web_auth = "login" the owner's uid is not enough,
// and any Host may ask (the cookie never reaches a rebound name).
func TestLoginOnly(t *testing.T) {
	lt := newLoginTest(t, true, map[byte]int{1: loginOwner})
	resp, body := lt.do(t, 1, "GET", "/", nil, "")
	if resp.StatusCode != 403 || !strings.Contains(body, `needs a login (web_auth = &#34;login&#34;)`) {
		t.Errorf("the owner without a login in login mode = %d %s, want 403", resp.StatusCode, body)
	}
	// A browser on another host logs in with a --remote link.
	resp, _ = lt.do(t, 4, "GET", "/login?token="+lt.f.Token(login.Remote, time.Now()), nil, "workstation:7777")
	cookie := sessionOf(resp)
	if resp.StatusCode != http.StatusSeeOther || cookie == nil {
		t.Fatalf("remote login = %d, want 303 with a cookie", resp.StatusCode)
	}
	if resp, _ := lt.do(t, 4, "GET", "/images", []*http.Cookie{cookie}, "workstation:7777"); resp.StatusCode != 200 {
		t.Errorf("the remote browser with its cookie = %d, want 200", resp.StatusCode)
	}
	if resp, _ := lt.do(t, 1, "GET", "/images", []*http.Cookie{cookie}, ""); resp.StatusCode != 403 {
		t.Errorf("the remote browser's cookie used locally = %d, want 403", resp.StatusCode)
	}
}

// TestServeRealPeer goes through the kernel: the test's own connections
// belong to its uid.
func TestServeRealPeer(t *testing.T) {
	f := rpctest.Start(t)
	for _, tc := range []struct {
		owner int
		want  int
	}{{testOwner, 200}, {testOwner + 1, 403}} {
		s, err := New(f.Client(), Options{Log: quiet, Owner: tc.owner})
		if err != nil {
			t.Fatal(err)
		}
		base, cl := serve(t, s)
		resp, err := cl.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET / of a UI owned by %d from uid %d = %d, want %d", tc.owner, testOwner, resp.StatusCode, tc.want)
		}
	}
}

// TestConnectionShares: one peer's flood of idle connections is cut to its
// share at once, and the owner still gets in.
func TestConnectionShares(t *testing.T) {
	f := rpctest.Start(t)
	const flooder = 5000
	s, err := New(f.Client(), Options{Log: quiet, Owner: loginOwner,
		Timeouts: Timeouts{ReadHeader: time.Second},
		PeerUID: func(local, remote netip.AddrPort) (int, error) {
			if remote.Addr() == netip.MustParseAddr("127.0.0.1") {
				return loginOwner, nil
			}
			return flooder, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	base, cl := serve(t, s)
	addr := strings.TrimPrefix(base, "http://")
	const n = perPeerConns + 36
	conns := make([]net.Conn, n)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for i := range conns {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// Connections beyond the share are closed at once; the share itself
	// lives until the header timeout.
	var mu sync.Mutex
	closedAt := map[int]time.Duration{}
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, net.ErrClosed) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				mu.Lock()
				closedAt[i] = time.Since(start)
				mu.Unlock()
			}
		}()
	}
	// Meanwhile the owner is served.
	time.Sleep(200 * time.Millisecond)
	resp, err := cl.Get(base + "/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the owner's GET / during the flood = %v %v, want 200", resp, err)
	}
	resp.Body.Close()
	mu.Lock()
	early := len(closedAt)
	mu.Unlock()
	if early != n-perPeerConns {
		t.Errorf("%d of %d idle connections were closed at once, want %d (the share is %d)", early, n, n-perPeerConns, perPeerConns)
	}
	wg.Wait()
	// The header timeout closed the rest.
	if len(closedAt) != n {
		t.Errorf("%d of %d idle connections were closed after the header timeout, want all", len(closedAt), n)
	}
}

// TestLimits: bodies and headers are capped, and a client that sends its
// headers too slowly is cut off.
func TestLimits(t *testing.T) {
	f, s, h := newTest(t)
	big := url.Values{"nat": {"on"}, "pad": {strings.Repeat("x", maxBody)}}
	w := do(t, h, request{method: "POST", target: "/vms/beta/nat", form: big, json: true})
	if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "the body is too large (the limit is 64 KiB)") {
		t.Errorf("POST with a %d-byte body = %d %s, want 413 too large", len(big.Encode()), w.Code, w.Body)
	}
	if vm, _ := f.VM("beta"); vm.NAT {
		t.Errorf("a refused oversized request changed beta")
	}
	s.timeouts = Timeouts{ReadHeader: 300 * time.Millisecond}.withDefaults()
	base, _ := serve(t, s)
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n") // and never the blank line
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	io.Copy(io.Discard, c) // until the server hangs up
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a slow header held its connection for %s, want about 300ms", d)
	}
	// Oversized headers are refused.
	c2, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprintf(c2, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n", strings.Repeat("x", 2*maxHeaderBytes))
	line, _ := bufio.NewReader(c2).ReadString('\n')
	if !strings.Contains(line, "431") {
		t.Errorf("a %d-byte header got %q, want 431", 2*maxHeaderBytes, line)
	}
}

func TestURL(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:7777", "http://127.0.0.1:7777"},
		{"0.0.0.0:7777", "http://127.0.0.1:7777"},
		{"[::]:7777", "http://127.0.0.1:7777"},
		{"[::1]:8080", "http://[::1]:8080"},
		{"192.0.2.5:7777", "http://192.0.2.5:7777"},
	} {
		a, _ := net.ResolveTCPAddr("tcp", tc.addr)
		if got := URL(a); got != tc.want {
			t.Errorf("URL(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

// TestTimeouts: the UI closes a keep-alive connection that sends no
// request, and a request whose body stalls.
func TestTimeouts(t *testing.T) {
	const short = 300 * time.Millisecond
	_, s, _ := newTest(t)
	s.timeouts = Timeouts{Idle: short, Read: short}.withDefaults()
	base, _ := serve(t, s)
	addr := strings.TrimPrefix(base, "http://")

	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			t.Fatalf("GET / = %d with Connection: close, want a keep-alive answer to time out", resp.StatusCode)
		}
		start := time.Now()
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) || time.Since(start) > 5*time.Second {
			t.Errorf("an idle keep-alive connection: %v after %v, want EOF about %v after its last answer", err, time.Since(start), short)
		}
	})

	t.Run("stalled body", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "POST /vms/beta/nat HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: "+base+"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nnat=o")
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c) // until the server hangs up
		if err != nil || time.Since(start) > 5*time.Second {
			t.Errorf("a stalled body held its connection for %v (%v), want it closed about %v in", time.Since(start), err, short)
		}
	})
}
