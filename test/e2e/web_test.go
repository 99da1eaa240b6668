package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestWebUI drives the real daemon's web UI from inside its namespace:
// the list page, a create through the form with live stages, and a delete.
func TestWebUI(t *testing.T) {
	e := newEnv(t)
	base := "http://127.0.0.1:7777"
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.ns.Dial(ctx, network, addr)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	do := func(method, path string, form url.Values, accept string) *http.Response {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, base+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", base)
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp
	}
	// The web listener comes up after the API socket: wait for it.
	for i := 0; ; i++ {
		req, _ := http.NewRequest("GET", base+"/", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 100 {
			t.Fatalf("web UI never answered: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp := do("GET", "/", nil, "")
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "banger") {
		t.Fatalf("GET / = %d:\n%s", resp.StatusCode, page)
	}

	resp = do("POST", "/vms", url.Values{"name": {"webbox"}, "image": {"minimal"}}, "")
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/ops/") {
		t.Fatalf("POST /vms = %d, Location %q; want 303 to /ops/ID", resp.StatusCode, loc)
	}
	var op struct {
		Done   bool   `json:"done"`
		State  string `json:"state"`
		Error  string `json:"error"`
		Stages []struct {
			Name string `json:"name"`
		} `json:"stages"`
	}
	deadline := time.Now().Add(5 * time.Minute)
	for !op.Done {
		if time.Now().After(deadline) {
			t.Fatalf("create through the web UI did not finish: %+v", op)
		}
		time.Sleep(time.Second)
		resp = do("GET", loc, nil, "application/json")
		if err := json.NewDecoder(resp.Body).Decode(&op); err != nil {
			t.Fatalf("decoding %s: %v", loc, err)
		}
		resp.Body.Close()
	}
	if op.Error != "" || len(op.Stages) < 4 {
		t.Fatalf("web create ended with %+v", op)
	}
	if got := strings.TrimSpace(e.ssh("webbox", "hostname")); got != "webbox" {
		t.Fatalf("hostname of the web-created VM = %q", got)
	}

	// A foreign Origin cannot change anything.
	req, _ := http.NewRequest("POST", base+"/vms/webbox/delete", strings.NewReader("force=on"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin delete: %v %v, want 403", resp, err)
	}
	resp = do("POST", "/vms/webbox/delete", url.Values{"force": {"on"}}, "")
	resp.Body.Close()
	if _, err := e.show("webbox"); err == nil {
		t.Fatalf("webbox still exists after the web delete (status %d)", resp.StatusCode)
	}
}
