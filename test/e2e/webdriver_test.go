package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmtest"
)

// chromiumFlags start a headless Chromium that talks to nothing on its
// own: no sandbox (it runs as root), no GPU, no QUIC, no first-run, sync,
// component or background traffic.
var chromiumFlags = []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage", "--window-size=1280,1100"}

// webDriver is a ChromeDriver running inside the env's namespace, spoken
// to with the W3C WebDriver HTTP API.
type webDriver struct {
	t      testing.TB
	base   string
	client *http.Client
}

// startWebDriver runs chromedriver in the namespace and waits until it is
// ready. The namespace's removal ends it and its browsers.
func (e *env) startWebDriver() *webDriver {
	e.t.Helper()
	vmtest.RequireHost(e.t, "the browser test", vmtest.Tool("chromedriver", "chromium-driver"), vmtest.Tool("chromium", "chromium"))
	const port = "9515"
	logf, err := os.Create(filepath.Join(e.root, "chromedriver.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := e.ns.Command(context.Background(), "chromedriver", "--port="+port, "--allowed-ips=127.0.0.1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting chromedriver: %v", err)
	}
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	wd := &webDriver{t: e.t, base: "http://127.0.0.1:" + port, client: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.ns.Dial(ctx, network, addr)
		}},
	}}
	for i := 0; ; i++ {
		var st struct {
			Ready bool `json:"ready"`
		}
		if err := wd.call("GET", "/status", nil, &st); err == nil && st.Ready {
			return wd
		}
		if i == 100 {
			e.t.Fatalf("chromedriver did not get ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// call sends one WebDriver command and decodes its "value".
func (wd *webDriver) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, wd.base+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := wd.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%s %s: %d: %q", method, path, resp.StatusCode, b)
	}
	if resp.StatusCode != 200 {
		var e struct{ Error, Message string }
		json.Unmarshal(env.Value, &e)
		return fmt.Errorf("%s %s: %s: %s", method, path, e.Error, e.Message)
	}
	if out != nil {
		return json.Unmarshal(env.Value, out)
	}
	return nil
}

// session is one browser.
type session struct {
	wd *webDriver
	id string
}

// newSession starts a fresh Chromium with its own profile; noJS turns
// JavaScript off for the pages (WebDriver's own scripts still run).
func (wd *webDriver) newSession(userData string, noJS bool) *session {
	wd.t.Helper()
	opts := map[string]any{"binary": "/usr/bin/chromium", "args": append(chromiumFlags, "--user-data-dir="+userData)}
	if noJS {
		opts["prefs"] = map[string]any{"profile.managed_default_content_settings.javascript": 2}
	}
	var v struct {
		SessionID string `json:"sessionId"`
	}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{"browserName": "chrome", "goog:chromeOptions": opts}}}
	if err := wd.call("POST", "/session", caps, &v); err != nil {
		wd.t.Fatalf("starting chromium: %v", err)
	}
	s := &session{wd: wd, id: v.SessionID}
	wd.t.Cleanup(func() { wd.call("DELETE", "/session/"+s.id, nil, nil) })
	return s
}

func (s *session) do(method, path string, in, out any) {
	s.wd.t.Helper()
	if err := s.wd.call(method, "/session/"+s.id+path, in, out); err != nil {
		s.wd.t.Fatalf("webdriver: %v", err)
	}
}

func (s *session) navigate(url string) { s.do("POST", "/url", map[string]string{"url": url}, nil) }

func (s *session) url() string {
	var u string
	s.do("GET", "/url", nil, &u)
	return u
}

// waitURL waits until the browser's address starts with prefix (a click
// returns before the page it submits has loaded) and returns it.
func (s *session) waitURL(prefix string, timeout time.Duration) string {
	s.wd.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		u := s.url()
		if strings.HasPrefix(u, prefix) {
			return u
		}
		if time.Now().After(deadline) {
			s.wd.t.Fatalf("the browser is at %s after %s, want %s...", u, timeout, prefix)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const elementKey = "element-6066-11e4-a52e-4f735466cecf"

// find returns the element the CSS selector names, failing the test.
func (s *session) find(css string) string {
	s.wd.t.Helper()
	var el map[string]string
	s.do("POST", "/element", map[string]string{"using": "css selector", "value": css}, &el)
	return el[elementKey]
}

// text returns the rendered text of the first element css names, or ""
// when there is none.
func (s *session) text(css string) string {
	if t := s.texts(css); len(t) > 0 {
		return t[0]
	}
	return ""
}

// texts returns the rendered texts of every element css names. A page
// that reloads itself meanwhile (the operation page without JavaScript)
// is read again.
func (s *session) texts(css string) []string {
	s.wd.t.Helper()
	var err error
	for range 10 {
		var out []string
		if out, err = s.tryTexts(css); err == nil {
			return out
		}
		if !strings.Contains(err.Error(), "stale element") && !strings.Contains(err.Error(), "no such element") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.wd.t.Fatalf("webdriver: reading %s: %v", css, err)
	return nil
}

func (s *session) tryTexts(css string) ([]string, error) {
	var els []map[string]string
	if err := s.wd.call("POST", "/session/"+s.id+"/elements", map[string]string{"using": "css selector", "value": css}, &els); err != nil {
		return nil, err
	}
	var out []string
	for _, el := range els {
		var t string
		if err := s.wd.call("GET", "/session/"+s.id+"/element/"+el[elementKey]+"/text", nil, &t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// elementText reads an element found earlier; a page that has been
// replaced since makes it fail with "stale element reference".
func (s *session) elementText(id string) (string, error) {
	var t string
	err := s.wd.call("GET", "/session/"+s.id+"/element/"+id+"/text", nil, &t)
	return t, err
}

func (s *session) title() string {
	var t string
	s.do("GET", "/title", nil, &t)
	return t
}

func (s *session) click(css string) {
	s.do("POST", "/element/"+s.find(css)+"/click", map[string]any{}, nil)
}

func (s *session) typeInto(css, text string) {
	id := s.find(css)
	s.do("POST", "/element/"+id+"/clear", map[string]any{}, nil)
	s.do("POST", "/element/"+id+"/value", map[string]string{"text": text}, nil)
}

// screenshot saves the page as a PNG at path.
func (s *session) screenshot(path string) {
	s.wd.t.Helper()
	var b64 string
	s.do("GET", "/screenshot", nil, &b64)
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		s.wd.t.Fatalf("decoding screenshot: %v", err)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		s.wd.t.Fatal(err)
	}
	s.wd.t.Logf("screenshot: %s", path)
}

func (s *session) source() string {
	var src string
	s.do("GET", "/source", nil, &src)
	return src
}

// flashes returns the texts of the page's flashes of kind ok or error.
func (s *session) flashes(kind string) []string {
	return s.texts(".flash-" + kind)
}

// screenshotDir is where the browser tests save their screenshots: the
// checkout's build/ (test/e2e is two levels below it).
func screenshotDir() string {
	if d := os.Getenv("BANGER_SCREENSHOTS"); d != "" {
		return d
	}
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..", "build")
}
