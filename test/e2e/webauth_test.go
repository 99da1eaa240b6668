package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmtest"
)

const webBase = "http://127.0.0.1:7777"

// webClient returns a client that connects from inside the env's namespace
// as the test's own user (root, bangerd's owner), once the UI answers.
func (e *env) webClient(base string) *http.Client {
	e.t.Helper()
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.ns.Dial(ctx, network, addr)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// The web listener comes up after the API socket: wait for it.
	for i := 0; ; i++ {
		resp, err := client.Get(base + "/static/app.css")
		if err == nil {
			resp.Body.Close()
			return client
		}
		if i == 100 {
			e.t.Fatalf("web UI at %s never answered: %v", base, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loginLink runs 'banger ui --no-open' as root inside the namespace, with
// extra environment (SUDO_UID), and returns the link it prints.
func (e *env) loginLink(extraEnv ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.ns.Command(ctx, filepath.Join(e.bin, "banger"), "ui", "--no-open")
	cmd.Env = append(e.environ(), extraEnv...)
	out, err := cmd.Output()
	link := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(link, webBase+"/login?token=") {
		e.t.Fatalf("banger ui --no-open = %q, %v", out, err)
	}
	return link
}

func sessionCookie(res probeResult) string {
	for _, c := range res.SetCookie {
		if strings.HasPrefix(c, "banger_session_7777=") && !strings.Contains(c, "Max-Age=0") {
			return strings.SplitN(c, ";", 2)[0]
		}
	}
	return ""
}

// TestWebUIOwnerOnly: another local user can neither read nor change
// anything through the web UI of root's bangerd, forged Origin or not,
// while root can; 'sudo banger ui' lets exactly the sudo user's browser in.
func TestWebUIOwnerOnly(t *testing.T) {
	e := newEnv(t)
	root := e.webClient(webBase)
	alice := newTestUser(t, "")   // ran 'sudo banger ui'
	mallory := newTestUser(t, "") // another local user
	e.create("authbox", "--image", "minimal")
	imagesBefore := e.imageNames()
	// A root-only file that must not become an image.
	secret := filepath.Join(e.root, "secret.ext4")
	os.WriteFile(secret, []byte("root only"), 0o600)

	form := "application/x-www-form-urlencoded"
	forged := func(body string, cookie string) map[string]string {
		h := map[string]string{"Origin": webBase, "Content-Type": form, "Referer": webBase + "/"}
		if cookie != "" {
			h["Cookie"] = cookie
		}
		return h
	}
	reads := []string{"/", "/vms/authbox", "/images", "/files?dir=/root", "/files?dir=" + url.QueryEscape(e.root),
		"/files", "/static/app.js", "/ops/x"}
	writes := []probe{
		{Method: "POST", URL: webBase + "/vms", Body: "name=intruder&image=minimal"},
		{Method: "POST", URL: webBase + "/vms/authbox/stop", Body: "back=/"},
		{Method: "POST", URL: webBase + "/vms/authbox/nat", Body: "nat=on"},
		{Method: "POST", URL: webBase + "/vms/authbox/delete", Body: "force=on"},
		{Method: "POST", URL: webBase + "/images", Body: "name=stolen&rootfs=" + url.QueryEscape(secret)},
		{Method: "POST", URL: webBase + "/images/minimal/delete", Body: ""},
		{Method: "POST", URL: webBase + "/images/build", Body: "name=intruder&kind=minimal"},
	}
	var probes []probe
	for _, p := range reads {
		probes = append(probes, probe{Method: "GET", URL: webBase + p},
			probe{Method: "GET", URL: webBase + p, Header: map[string]string{"Accept": "application/json"}})
	}
	for _, w := range writes {
		w.Header = forged(w.Body, "")
		probes = append(probes, w)
	}
	refusal := func(uid int) string {
		return fmt.Sprintf("this web UI belongs to root (uid 0), and this connection comes from uid %d", uid)
	}
	check := func(who *testUser, probes []probe, res []probeResult) {
		t.Helper()
		for i, r := range res {
			p := probes[i]
			if r.Status != http.StatusForbidden || !strings.Contains(r.Body, refusal(who.UID)) {
				t.Errorf("%s: %s %s = %d %s %q, want 403 saying %q", who.Name, p.Method, p.URL, r.Status, r.Err, tail(r.Body, 3), refusal(who.UID))
			}
			for _, leak := range []string{"172.30.0.", "rootfs-minimal", "bangerd.sock", ".ssh", "authbox</a>"} {
				if strings.Contains(r.Body, leak) {
					t.Errorf("%s: %s %s shows %q", who.Name, p.Method, p.URL, leak)
				}
			}
		}
	}
	check(mallory, probes, e.probeAs(mallory, probes))

	// Root, bangerd's owner, reads every page.
	for _, p := range reads {
		resp, err := root.Get(webBase + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := http.StatusOK
		if p == "/ops/x" {
			want = http.StatusNotFound
		}
		if p == "/files?dir="+url.QueryEscape(e.root) {
			want = http.StatusBadRequest // outside the roots: /root and the data dir
		}
		if resp.StatusCode != want {
			t.Errorf("root: GET %s = %d, want %d: %s", p, resp.StatusCode, want, tail(string(body), 5))
		}
	}
	e.checkUnchanged(imagesBefore)

	// 'sudo banger ui' by alice: the link logs in alice's browser only.
	link := e.loginLink("SUDO_UID=" + fmt.Sprint(alice.UID))
	if r := e.probeAs(mallory, []probe{{Method: "GET", URL: link}})[0]; r.Status != 403 || !strings.Contains(r.Body, "made for another user") || sessionCookie(r) != "" {
		t.Errorf("mallory redeeming alice's link = %d %s, want 403", r.Status, tail(r.Body, 3))
	}
	r := e.probeAs(alice, []probe{{Method: "GET", URL: link}})[0]
	cookie := sessionCookie(r)
	if r.Status != http.StatusSeeOther || r.Location != "/" || cookie == "" {
		t.Fatalf("alice's login = %d %q %v, want 303 to / with a session cookie", r.Status, r.Location, r.SetCookie)
	}
	if c := strings.Join(r.SetCookie, "\n"); !strings.Contains(c, "HttpOnly") || !strings.Contains(c, "SameSite=Strict") {
		t.Errorf("session cookie = %q, want HttpOnly and SameSite=Strict", c)
	}
	withCookie := map[string]string{"Cookie": cookie}
	res := e.probeAs(alice, []probe{
		{Method: "GET", URL: webBase + "/", Header: withCookie},
		{Method: "GET", URL: webBase + "/vms/authbox", Header: withCookie},
		{Method: "POST", URL: webBase + "/vms/authbox/nat", Body: "nat=on", Header: forged("", cookie)},
		{Method: "GET", URL: link},
		{Method: "GET", URL: webBase + "/"},
	})
	if res[0].Status != 200 || !strings.Contains(res[0].Body, "authbox") || !strings.Contains(res[0].Body, "Log out") {
		t.Errorf("alice with her cookie: GET / = %d, want 200 with the VM list", res[0].Status)
	}
	if res[1].Status != 200 || !strings.Contains(res[1].Body, "banger vm ssh authbox") {
		t.Errorf("alice with her cookie: GET /vms/authbox = %d", res[1].Status)
	}
	if res[2].Status != http.StatusSeeOther {
		t.Errorf("alice with her cookie: POST nat = %d %s, want 303", res[2].Status, tail(res[2].Body, 3))
	}
	if vm, _ := e.show("authbox"); !vm.NAT {
		t.Errorf("alice's NAT change did not happen")
	}
	if res[3].Status != 403 || !strings.Contains(res[3].Body, "used already") {
		t.Errorf("alice's link a second time = %d, want 403 used already", res[3].Status)
	}
	if res[4].Status != 403 || !strings.Contains(res[4].Body, refusal(alice.UID)) {
		t.Errorf("alice without her cookie = %d, want 403", res[4].Status)
	}
	// Mallory, holding alice's cookie, still gets nothing.
	stolen := []probe{
		{Method: "GET", URL: webBase + "/", Header: withCookie},
		{Method: "POST", URL: webBase + "/vms/authbox/delete", Body: "force=on", Header: forged("", cookie)},
	}
	for i, r := range e.probeAs(mallory, stolen) {
		if r.Status != 403 || !strings.Contains(r.Body, "the login cookie belongs to another user") {
			t.Errorf("mallory with alice's cookie: %s %s = %d, want 403", stolen[i].Method, stolen[i].URL, r.Status)
		}
	}
	if _, err := e.show("authbox"); err != nil {
		t.Errorf("authbox is gone after mallory's delete with a stolen cookie: %v", err)
	}
}

func (e *env) imageNames() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	imgs, err := e.client().ListImages(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, img := range imgs {
		names = append(names, img.Name)
	}
	sort.Strings(names)
	return names
}

// checkUnchanged checks that refused requests left authbox, the VM list
// and the images alone.
func (e *env) checkUnchanged(images []string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vms, err := e.client().ListVMs(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Name != "authbox" || vms[0].State != "running" || vms[0].NAT {
		e.t.Errorf("VMs after refused requests = %+v, want authbox alone, running, without NAT", vms)
	}
	if got := e.imageNames(); !slices.Equal(got, images) {
		e.t.Errorf("images after refused requests = %v, want %v", got, images)
	}
}

// TestWebUIUserDaemon runs bangerd as an ordinary user: the UI answers
// that user (and not root, nor anyone else), its file picker starts in the
// user's home and never lists or takes what the user cannot read, and
// 'banger ui' works there too.
func TestWebUIUserDaemon(t *testing.T) {
	alice := newTestUser(t, "")
	mallory := newTestUser(t, "")
	const base = "http://127.0.0.1:7778"
	e := newEnvWith(t, envOpts{user: alice, config: defaultConfig + "web_listen_addr = \"127.0.0.1:7778\"\ntap_pool_size = 0\n"})
	root := e.webClient(base)

	// Files in alice's home: hers, one of root's she cannot read, and a
	// directory she cannot enter.
	os.WriteFile(filepath.Join(alice.Home, "mine.ext4"), make([]byte, 4096), 0o644)
	os.Chown(filepath.Join(alice.Home, "mine.ext4"), alice.UID, alice.GID)
	os.WriteFile(filepath.Join(alice.Home, "roots.ext4"), []byte("root only"), 0o600)
	os.Mkdir(filepath.Join(alice.Home, "closed"), 0o700)
	os.WriteFile(filepath.Join(alice.Home, "closed", "inner.ext4"), []byte("x"), 0o644)

	acceptJSON := map[string]string{"Accept": "application/json"}
	post := map[string]string{"Origin": base, "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
	res := e.probeAs(alice, []probe{
		{Method: "GET", URL: base + "/"},
		{Method: "GET", URL: base + "/files", Header: acceptJSON},
		{Method: "GET", URL: base + "/files?dir=" + url.QueryEscape(alice.Home+"/closed"), Header: acceptJSON},
		{Method: "GET", URL: base + "/files?dir=/root", Header: acceptJSON},
		{Method: "POST", URL: base + "/images", Body: "name=stolen&rootfs=" + url.QueryEscape(alice.Home+"/roots.ext4"), Header: post},
	})
	if res[0].Status != 200 {
		t.Errorf("alice, the owner: GET / = %d %s", res[0].Status, tail(res[0].Body, 3))
	}
	if res[1].Status != 200 || !strings.Contains(res[1].Body, `"mine.ext4"`) || strings.Contains(res[1].Body, "roots.ext4") ||
		strings.Contains(res[1].Body, `"closed"`) || !strings.Contains(res[1].Body, `"dir": "`+alice.Home+`"`) {
		t.Errorf("alice's picker = %d %s, want her home with mine.ext4 and not root's files", res[1].Status, res[1].Body)
	}
	if res[2].Status != 403 {
		t.Errorf("alice's picker of a directory she cannot enter = %d %s, want 403", res[2].Status, res[2].Body)
	}
	if res[3].Status != 400 || !strings.Contains(res[3].Body, "stays inside "+alice.Home) {
		t.Errorf("alice's picker of /root = %d %s, want 400", res[3].Status, res[3].Body)
	}
	if res[4].Status != 400 || !strings.Contains(res[4].Body, "permission denied") {
		t.Errorf("alice registering root's file = %d %s, want 400 permission denied", res[4].Status, res[4].Body)
	}
	if slices.Contains(e.imageNames(), "stolen") {
		t.Errorf("root's file became an image")
	}

	// Root is not this bangerd's owner, nor is mallory.
	resp, err := root.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("this web UI belongs to %s (uid %d), and this connection comes from uid 0", alice.Name, alice.UID); resp.StatusCode != 403 || !strings.Contains(string(body), want) {
		t.Errorf("root on alice's UI = %d %s, want 403 %q", resp.StatusCode, tail(string(body), 3), want)
	}

	// 'banger ui' as alice.
	out, errOut, err := e.banger(context.Background(), "ui", "--no-open")
	link := strings.TrimSpace(out)
	if err != nil || !strings.HasPrefix(link, base+"/login?token=") {
		t.Fatalf("banger ui as alice = %q, %v: %s", out, err, errOut)
	}
	if r := e.probeAs(mallory, []probe{{Method: "GET", URL: link}, {Method: "GET", URL: base + "/images"}}); r[0].Status != 403 || r[1].Status != 403 {
		t.Errorf("mallory with alice's link = %d, then /images = %d, want 403 and 403", r[0].Status, r[1].Status)
	}
	r := e.probeAs(alice, []probe{{Method: "GET", URL: link}})[0]
	if r.Status != http.StatusSeeOther || sessionCookieOf(r, "7778") == "" {
		t.Errorf("alice's login = %d %v, want 303 with a cookie", r.Status, r.SetCookie)
	}
	st, err := e.client().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(st.StateDir, "web-login.json")); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != uint32(alice.UID) {
		t.Errorf("alice's login secret = %v, %v, want mode 0600, hers", fi, err)
	}
}

func sessionCookieOf(res probeResult, port string) string {
	for _, c := range res.SetCookie {
		if strings.HasPrefix(c, "banger_session_"+port+"=") && !strings.Contains(c, "Max-Age=0") {
			return strings.SplitN(c, ";", 2)[0]
		}
	}
	return ""
}

// TestWebUILoginOnly listens on every address with web_auth = "login": a
// browser on another host (a second namespace behind a veth pair) gets in
// only with a 'banger ui --remote' link, and even root's local
// connections need a login.
func TestWebUILoginOnly(t *testing.T) {
	e := newEnvConfig(t, defaultConfig+"web_listen_addr = \"0.0.0.0:7777\"\nweb_auth = \"login\"\n")
	root := e.webClient(webBase)
	other := vmtest.NewNS(t)
	for _, args := range [][]string{
		{"-n", e.ns.Name, "link", "add", "vw", "type", "veth", "peer", "name", "vo", "netns", other.Name},
		{"-n", e.ns.Name, "addr", "add", "192.0.2.2/24", "dev", "vw"},
		{"-n", e.ns.Name, "link", "set", "vw", "up"},
		{"-n", other.Name, "addr", "add", "192.0.2.1/24", "dev", "vo"},
		{"-n", other.Name, "link", "set", "vo", "up"},
	} {
		if out, err := vmtest.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	const remoteBase = "http://192.0.2.2:7777"
	away := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return other.Dial(ctx, network, addr)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	get := func(c *http.Client, u, cookie string) (int, string, []*http.Cookie) {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), resp.Cookies()
	}
	for name, c := range map[string]*http.Client{"the other host": away, "root": root} {
		base := remoteBase
		if c == root {
			base = webBase
		}
		if code, body, _ := get(c, base+"/", ""); code != 403 || !strings.Contains(body, "needs a login") {
			t.Errorf("%s without a login: GET / = %d %s, want 403", name, code, tail(body, 3))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.ns.Command(ctx, filepath.Join(e.bin, "banger"), "ui", "--remote")
	cmd.Env = e.environ()
	out, err := cmd.Output()
	u, perr := url.Parse(strings.TrimSpace(string(out)))
	if err != nil || perr != nil || u.Path != "/login" || u.Query().Get("token") == "" {
		t.Fatalf("banger ui --remote = %q, %v", out, err)
	}
	// The link names this host; the other namespace reaches it as 192.0.2.2.
	link := remoteBase + "/login?" + u.RawQuery
	if code, _, _ := get(root, webBase+"/login?"+u.RawQuery, ""); code != 403 {
		t.Errorf("root redeeming the remote link = %d, want 403", code)
	}
	session := func(cookies []*http.Cookie) string {
		for _, c := range cookies {
			if c.Name == "banger_session_7777" && c.MaxAge > 0 {
				return c.Name + "=" + c.Value
			}
		}
		return ""
	}
	code, _, cookies := get(away, link, "")
	cookie := session(cookies)
	if code != http.StatusSeeOther || cookie == "" {
		t.Fatalf("the other host's login = %d, want 303 with a cookie", code)
	}
	if code, body, _ := get(away, remoteBase+"/images", cookie); code != 200 || !strings.Contains(body, "minimal") {
		t.Errorf("the other host with its cookie: GET /images = %d, want 200", code)
	}
	if code, body, _ := get(root, webBase+"/images", cookie); code != 403 || !strings.Contains(body, "belongs to another user") {
		t.Errorf("root with the other host's cookie = %d %s, want 403", code, tail(body, 3))
	}
	// Root logs in locally with its own link.
	code, _, cookies = get(root, e.loginLink(), "")
	if code != http.StatusSeeOther || session(cookies) == "" {
		t.Fatalf("root's local login = %d", code)
	}
	if code, _, _ := get(root, webBase+"/", session(cookies)); code != 200 {
		t.Errorf("root with its cookie = %d, want 200", code)
	}
}
