package fctest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// put sends a raw request to the server's socket.
func put(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func bootedServer(t *testing.T) (s *Server, dir string) {
	t.Helper()
	dir = t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o600)
	s = NewServer("vm-a")
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, c := range [][3]string{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
		{"PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel)},
		{"PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(dir, "v.sock"))},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
			t.Fatalf("%s %s = %d %s, want 204", c[0], c[1], code, body)
		}
	}
	return s, dir
}

func TestErrorBodyIsFaultMessage(t *testing.T) {
	s, dir := bootedServer(t)
	code, body := put(t, filepath.Join(dir, "api.sock"), "PUT", "/entropy", `{}`)
	want := `{"fault_message":"PUT /entropy is only allowed before the microVM starts, and it has started"}` + "\n"
	if code != http.StatusBadRequest || body != want {
		t.Errorf("PUT /entropy after boot = %d %q, want 400 %q", code, body, want)
	}
	calls := s.Calls()
	if last := calls[len(calls)-1]; last.Status != 400 || !strings.Contains(last.Fault, "only allowed before") {
		t.Errorf("recorded call = %+v, want the 400 and its fault", last)
	}
}

func TestVsockAgent(t *testing.T) {
	tests := []struct {
		connect string
		request string
		want    string // prefix of the agent's answer; "" means the connection closes
	}{
		{"CONNECT 1024\n", `{"op":"health"}`, `{"hostname":"vm-a","ok":true,`},
		{"CONNECT 1024\n", `{"op":"dance"}`, `{"error":"unknown op \"dance\"","ok":false}`},
		{"CONNECT 1024\n", `not json`, `{"error":"decoding request:`},
		{"CONNECT 22\n", `{"op":"health"}`, ""},
		{"HELLO\n", `{"op":"health"}`, ""},
	}
	_, dir := bootedServer(t)
	for _, tt := range tests {
		c, err := net.Dial("unix", filepath.Join(dir, "v.sock"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, tt.connect)
		br := bufio.NewReader(c)
		ok, err := br.ReadString('\n')
		if tt.want == "" {
			if err == nil {
				t.Errorf("%q answered %q, want the connection closed", tt.connect, ok)
			}
			c.Close()
			continue
		}
		if !strings.HasPrefix(ok, "OK ") {
			t.Fatalf("%q answered %q, %v, want OK <port>", tt.connect, ok, err)
		}
		io.WriteString(c, tt.request+"\n")
		got, _ := br.ReadString('\n')
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("agent(%s) = %q, want prefix %q", tt.request, got, tt.want)
		}
		c.Close()
	}
}

func TestCtrlAltDelPowersOff(t *testing.T) {
	s, dir := bootedServer(t)
	sock := filepath.Join(dir, "api.sock")
	if code, body := put(t, sock, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`); code != http.StatusNoContent {
		t.Fatalf("SendCtrlAltDel = %d %s", code, body)
	}
	select {
	case <-s.PoweredOff():
	case <-time.After(5 * time.Second):
		t.Fatal("no power-off after SendCtrlAltDel")
	}
	s.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("api socket after power-off: %v, want it removed", err)
	}
}

func TestMainRejectsBadFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--no-such-flag"}, &out, &errb); code != 1 {
		t.Errorf("Main(--no-such-flag) = %d, want 1", code)
	}
	sock := filepath.Join(t.TempDir(), "taken.sock")
	os.WriteFile(sock, nil, 0o600)
	if code := Main([]string{"--api-sock", sock}, &out, &errb); code != 1 {
		t.Errorf("Main on an existing path = %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "address already in use") {
		t.Errorf("stderr = %q, want it to say the address is in use", errb.String())
	}
}
