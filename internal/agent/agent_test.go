package agent

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClientSkipsStale(t *testing.T) {
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			line, _ := bufio.NewReader(b).ReadString('\n')
			id := strings.TrimSuffix(strings.SplitN(line, `"id":`, 2)[1], "}\n")
			b.Write([]byte(`{"ok":true,"id":999999,"hostname":"stale"}` + "\n"))
			b.Write([]byte(`{"ok":true,"id":` + id + `,"hostname":"fresh"}` + "\n"))
		}()
		return a, nil
	}}
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Hostname != "fresh" {
		t.Errorf("Health().Hostname = %q, want %q", h.Hostname, "fresh")
	}
}

// TestClientGuestError: a guest's error message reaches the user short and
// without control characters (found by FuzzClientReply).
func TestClientGuestError(t *testing.T) {
	for _, tt := range []struct{ guest, want string }{
		{`unknown op \"health\"`, `agent health: unknown op "health"`},
		{`000\b`, "agent health: 000"},
		{`\u001b[2J\u001b]0;owned\u0007 \u009b1m` + strings.Repeat("x", 300), "agent health: [2J]0;owned 1m" + strings.Repeat("x", 256-19) + "..."},
	} {
		c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
			a, b := net.Pipe()
			go func() {
				defer b.Close()
				bufio.NewReader(b).ReadString('\n')
				b.Write([]byte(`{"ok":false,"error":"` + tt.guest + `"}` + "\n"))
			}()
			return a, nil
		}}
		if _, err := c.Health(context.Background()); err == nil || err.Error() != tt.want {
			t.Errorf("Health() with guest error %q = %v, want %q", tt.guest, err, tt.want)
		}
	}
}

func TestClientDeadline(t *testing.T) {
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			bufio.NewReader(b).ReadString('\n') // never answers
			time.Sleep(5 * time.Second)
			b.Close()
		}()
		return a, nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Health(ctx); err == nil {
		t.Fatal("Health() with a silent guest = nil error, want a deadline error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Health() returned after %v, want about 200ms", d)
	}
}

// TestServeUnixSocket runs the protocol over a real unix socket pair, as
