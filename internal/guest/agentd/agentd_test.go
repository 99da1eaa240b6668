package agentd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
)

// pipeClient serves each dial with srv over a fresh net.Pipe.
func pipeClient(t *testing.T, srv *Server) *agent.Client {
	t.Helper()
	return &agent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			srv.ServeConn(b)
		}()
		return a, nil
	}}
}

func TestHealth(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ssh_host_ed25519_key.pub"), []byte("ssh-ed25519 AAAAtest root@x\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "ssh_host_ed25519_key"), []byte("PRIVATE"), 0o600)
	srv := &Server{HostKeyGlob: filepath.Join(dir, "ssh_host_*_key.pub"), Shutdown: func() { t.Error("shutdown called") }}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := pipeClient(t, srv).Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if !h.OK || h.Hostname != host || h.UptimeMS <= 0 {
		t.Errorf("Health() = %+v, want ok, hostname %q and a positive uptime", h, host)
	}
	if want := []string{"ssh-ed25519 AAAAtest root@x"}; !reflect.DeepEqual(h.SSHHostKeys, want) {
		t.Errorf("Health().SSHHostKeys = %q, want %q", h.SSHHostKeys, want)
	}
}

func TestShutdown(t *testing.T) {
	called := make(chan struct{}, 2)
	srv := &Server{Shutdown: func() { called <- struct{}{} }}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pipeClient(t, srv).Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
	case <-time.After(2 * time.Second):
		t.Fatal("Shutdown() did not run the shutdown callback")
	}
	// A second request is answered but does not shut down twice.
	if err := pipeClient(t, srv).Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
		t.Error("shutdown callback ran twice")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestServeConnLines(t *testing.T) {
	srv := &Server{Shutdown: func() {}}
	tests := []struct {
		in, want string
	}{
		{`{"op":"reboot-now"}`, `{"ok":false,"error":"unknown op \"reboot-now\": use one of health, shutdown, identity, mount, template"}`},
		{`not json`, `"ok":false`},
		{`{"op":"health","surprise":1}`, `unknown field`},
		{`{"op":"health"} {"op":"shutdown"}`, `data after the object`},
		{`{"op":"identity"}`, `carries no identity`},
		{`{"op":"health","id":7}`, `"id":7`},
		{`{"op":"shutdown"}`, `{"ok":true}`},
	}
	for _, tt := range tests {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			srv.ServeConn(b)
		}()
		a.SetDeadline(time.Now().Add(5 * time.Second))
		a.Write([]byte(tt.in + "\n"))
		got, err := bufio.NewReader(a).ReadString('\n')
		a.Close()
		if err != nil {
			t.Fatalf("ServeConn(%s): reading answer: %v", tt.in, err)
		}
		if !strings.Contains(got, tt.want) {
			t.Errorf("ServeConn(%s) = %s, want %s", tt.in, strings.TrimSpace(got), tt.want)
		}
	}
}

// TestClientSkipsStale checks that a late answer left on a shared stream
// (virtio-serial) does not pass for the answer to a new request.
// the virtio-serial chardev socket carries it.
func TestServeUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &Server{HostKeyGlob: filepath.Join(t.TempDir(), "none*"), Shutdown: func() {}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				srv.ServeConn(c)
			}()
		}
	}()
	c := &agent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.SSHHostKeys == nil || len(h.SSHHostKeys) != 0 {
		t.Errorf("Health().SSHHostKeys = %#v, want an empty list", h.SSHHostKeys)
	}
}

// fakeFirecracker serves Firecracker's hybrid vsock handshake on a unix
// loopback transport (CID 1), when the kernel has one.
func TestVsockLoopback(t *testing.T) {
	port := uint32(40000 + os.Getpid()%20000)
	ln, err := listenVsock(port)
	if err != nil {
		t.Skipf("no AF_VSOCK here (%v): load vsock_loopback to run this test", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	srv := &Server{Shutdown: func() {}}
	go func() {
		defer close(done)
		srv.acceptLoop(ctx, ln)
	}()
	defer func() {
		cancel()
		<-done
	}()
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "vsock-client")
	defer f.Close()
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		t.Skipf("connecting to vsock loopback: %v: load vsock_loopback to run this test", err)
	}
	f.Write([]byte(`{"op":"health"}` + "\n"))
	got, err := bufio.NewReader(f).ReadString('\n')
	if err != nil || !strings.Contains(got, `"ok":true`) {
		t.Errorf("health over vsock = %q, %v, want an ok answer", got, err)
	}
}

// scriptedPort reads its chunks in order, an empty chunk being one EOF
// (as a virtio-serial port reads while no host side is connected), then
// EOF for good; it records what is written.
type scriptedPort struct {
	mu     sync.Mutex
	chunks []string
	out    strings.Builder
}

func (p *scriptedPort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.chunks) == 0 {
		return 0, io.EOF
	}
	c := p.chunks[0]
	p.chunks = p.chunks[1:]
	if c == "" {
		return 0, io.EOF
	}
	return copy(b, c), nil
}

func (p *scriptedPort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *scriptedPort) written() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// TestServePortAcrossReconnects: a request that arrives after the host side
// went away and came back (EOFs between) is answered on the same port.
func TestServePortAcrossReconnects(t *testing.T) {
	port := &scriptedPort{chunks: []string{
		`{"op":"shutdown-not","id":1}` + "\n", "", "", `{"op":"nope","id":2}` + "\n", "", `{"op":"again","id":3}` + "\n",
	}}
	srv := &Server{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.servePort(ctx, port) }()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(port.written(), "\n") < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("servePort = %v, want context.Canceled once ctx ends", err)
	}
	got := port.written()
	for _, id := range []string{`"id":1`, `"id":2`, `"id":3`} {
		if !strings.Contains(got, id) {
			t.Errorf("answers %q lack %s: a request after an EOF was not served", got, id)
		}
	}
}
