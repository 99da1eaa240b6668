package agent

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestconfig"
)

// pipeClient serves each dial with srv over a fresh net.Pipe.
func pipeClient(t *testing.T, srv *Server) *Client {
	t.Helper()
	return &Client{Dial: func(ctx context.Context) (net.Conn, error) {
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
		{`{"op":"reboot-now"}`, `{"ok":false,"error":"unknown op \"reboot-now\": use \"health\" or \"shutdown\""}`},
		{`not json`, `"ok":false`},
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
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
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
// socket, then echoes.
func fakeFirecracker(t *testing.T, answer string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if line != "CONNECT 1024\n" {
					c.Write([]byte("ERR bad request\n"))
					return
				}
				// The answer and the first guest bytes arrive together.
				c.Write([]byte(answer + "hello\n"))
				buf := make([]byte, 64)
				for {
					n, err := r.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	return sock
}

func TestDialHybridVsock(t *testing.T) {
	tests := []struct {
		answer  string
		wantErr bool
	}{
		{"OK 1073741824\n", false},
		{"ERR no listener\n", true},
		{"OK notaport\n", true},
	}
	for _, tt := range tests {
		sock := fakeFirecracker(t, tt.answer)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := DialHybridVsock(ctx, sock, 1024)
		cancel()
		if (err != nil) != tt.wantErr {
			t.Errorf("DialHybridVsock(answer %q) error = %v, want error %v", tt.answer, err, tt.wantErr)
		}
		if err != nil {
			continue
		}
		r := bufio.NewReader(conn)
		if got, _ := r.ReadString('\n'); got != "hello\n" {
			t.Errorf("DialHybridVsock(answer %q): first guest line = %q, want %q", tt.answer, got, "hello\n")
		}
		conn.Write([]byte("ping\n"))
		if got, _ := r.ReadString('\n'); got != "ping\n" {
			t.Errorf("DialHybridVsock(answer %q): echo = %q, want %q", tt.answer, got, "ping\n")
		}
		conn.Close()
	}
}

func TestCommands(t *testing.T) {
	c, err := guestconfig.ParseNetwork("ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1")
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "eth0", "up"},
		{"addr", "replace", "172.16.0.2/24", "dev", "eth0"},
		{"route", "replace", "default", "via", "172.16.0.1", "dev", "eth0"},
	}
	if got := ipCommands(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Commands() = %q, want %q", got, want)
	}
	if got, want := resolvConf(c), "nameserver 172.16.0.1\n"; !strings.HasSuffix(got, want) {
		t.Errorf("ResolvConf() = %q, want it to end %q", got, want)
	}
}

func TestHostsWithName(t *testing.T) {
	tests := []struct{ old, name, want string }{
		{"127.0.0.1\tlocalhost\n", "vm1", "127.0.0.1\tlocalhost\n127.0.1.1\tvm1\n"},
		{"127.0.0.1\tlocalhost\n127.0.1.1\told\n", "new", "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n"},
	}
	for _, tt := range tests {
		if got := hostsWithName(tt.old, tt.name); got != tt.want {
			t.Errorf("hostsWithName(%q, %q) = %q, want %q", tt.old, tt.name, got, tt.want)
		}
	}
}

// TestVsockLoopback serves over a real AF_VSOCK socket through the host's
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
