package api

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestSlowBody: a request body that never arrives is refused once the read
// deadline passes, instead of holding a connection and a goroutine forever.
func TestSlowBody(t *testing.T) {
	srv := httptest.NewServer((&Server{Timeouts: Timeouts{Read: 300 * time.Millisecond}}).Handler())
	t.Cleanup(srv.Close)
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":"))
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body after %v: %v", time.Since(start), err)
	}
	if resp.StatusCode != http.StatusBadRequest || time.Since(start) > 5*time.Second {
		t.Errorf("stalled body: %d after %v, want 400 within the read deadline", resp.StatusCode, time.Since(start))
	}
}

// TestBodyCap: a body over MaxBody is refused with an error that does not
// echo it.
func TestBodyCap(t *testing.T) {
	srv := httptest.NewServer((&Server{}).Handler())
	t.Cleanup(srv.Close)
	big := `{"name":"` + strings.Repeat("a", 2*MaxBody) + `"}`
	resp, err := http.Post(srv.URL+"/v1/vms", "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	want := fmt.Sprintf("the body is over %d bytes", MaxBody)
	if resp.StatusCode != http.StatusBadRequest || b.Len() > 2048 || !strings.Contains(b.String(), want) {
		t.Errorf("a %d-byte body: %d with a %d-byte answer %.200q, want 400 and a short one saying %q", len(big), resp.StatusCode, b.Len(), b.String(), want)
	}
}
