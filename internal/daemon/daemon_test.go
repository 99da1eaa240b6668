package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon"
	"github.com/banger/banger/internal/daemon/api"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/runner/runnertest"
)

// TestOneDaemonPerState: two bangerds never share a state dir, even with
// different runtime dirs (sudo banger has none, a root login shell has
// /run/user/0): the lock lives beside the database.
func TestOneDaemonPerState(t *testing.T) {
	dir := rpctest.TempDir(t)
	state := filepath.Join(dir, "state")
	paths := func(rt string) config.Paths {
		return config.Paths{StateDir: state, DataDir: filepath.Join(dir, "data"), RuntimeDir: filepath.Join(dir, rt),
			Socket: filepath.Join(dir, rt, "bangerd.sock"), DB: filepath.Join(state, "banger.db"),
			KnownHosts: filepath.Join(state, "known_hosts"), Lock: filepath.Join(state, "bangerd.lock")}
	}
	open := func(rt string) (*daemon.Daemon, error) {
		return daemon.New(daemon.Options{Config: config.Defaults(), Paths: paths(rt), Runner: &runnertest.Runner{}, NoHost: true})
	}
	first, err := open("run-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = open("run-b")
	if err == nil || !strings.Contains(err.Error(), "another bangerd (pid "+strconv.Itoa(os.Getpid())+") already uses this state") {
		t.Fatalf("a second bangerd on the same state = %v, want it refused naming the first", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := open("run-b")
	if err != nil {
		t.Fatalf("a bangerd after the first closed = %v", err)
	}
	second.Close()
}

// bangerd bounds a VM's memory by the host's: a create asking for more
// than any host has is refused, naming the host's memory.
func TestCreateBoundedByHostMemory(t *testing.T) {
	s := startDaemon(t)
	_, err := s.c.CreateVM(context.Background(), rpc.CreateRequest{Name: "huge", MemoryMiB: 1 << 30}, nil)
	if !rpc.IsCode(err, rpc.CodeInvalid) || !strings.Contains(err.Error(), "more than this host has") {
		t.Fatalf("create with 1 PiB of memory = %v, want invalid: more than this host has", err)
	}
	if vms, err := s.c.ListVMs(context.Background()); err != nil || len(vms) != 0 {
		t.Errorf("after the refused create: VMs %v, %v; want none", vms, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A failed vm start is logged, with the VM's name and the error.
func TestStartFailureIsLogged(t *testing.T) {
	var buf syncBuffer
	s := startDaemonLog(t, slog.New(slog.NewJSONHandler(&buf, nil)))
	ctx := context.Background()
	if _, err := s.c.CreateVM(ctx, rpc.CreateRequest{Name: "box", Image: "minimal"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.StopVM(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	s.failBoots("box", true)
	_, startErr := s.c.StartVM(ctx, "box", nil)
	if startErr == nil {
		t.Fatal("start of a VM whose hypervisor exits at boot succeeded")
	}
	var found bool
	for line := range strings.Lines(buf.String()) {
		var rec struct{ Level, Msg, VM, Err string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "start failed" && rec.Level == "ERROR" && rec.VM == "box" && rec.Err != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("start failed with %v, but bangerd logged no ERROR \"start failed\" record for vm box with the error:\n%s", startErr, buf.String())
	}
}

// The API closes a keep-alive connection that sends no request, and cuts
// off a client that stops reading its answer.
func TestAPITimeouts(t *testing.T) {
	const short = 300 * time.Millisecond
	s := startDaemonWith(t, func(o *daemon.Options) {
		o.APITimeouts = api.Timeouts{Idle: short, Write: short}
	})
	ctx := context.Background()

	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("unix", s.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\nHost: bangerd\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) || time.Since(start) > 5*time.Second {
			t.Errorf("an idle keep-alive connection: %v after %v, want EOF about %v after its last answer", err, time.Since(start), short)
		}
	})

	t.Run("client that stops reading", func(t *testing.T) {
		v, err := s.c.CreateVM(ctx, rpc.CreateRequest{Name: "loud", Image: "minimal"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Stopped, so that its log is not rotated under the test.
		if _, err := s.c.StopVM(ctx, "loud"); err != nil {
			t.Fatal(err)
		}
		// Far more than the socket buffers hold.
		const size = 4 << 20
		if err := os.WriteFile(filepath.Join(v.Dir, "console.log"), bytes.Repeat([]byte("spam spam spam\n"), size/15), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("unix", s.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "GET /v1/vms/loud/logs HTTP/1.1\r\nHost: bangerd\r\n\r\n")
		time.Sleep(4 * short) // not reading: the server's writes block, then time out
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("a client that stopped reading got %d bytes of a %d-byte log, then %v; want the server to hang up mid-answer (unexpected EOF)", n, size, err)
		}
	})
}
