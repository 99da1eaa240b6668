package rpc

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStreamCutOff: a client whose bangerd dies in the middle of a create
// is told so, with what to do, not "unexpected EOF".
func TestStreamCutOff(t *testing.T) {
	dir, err := os.MkdirTemp("", "bgrpc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Write([]byte(`{"type":"stage","stage":"preparing disks"}` + "\n"))
		w.(http.Flusher).Flush()
		// The daemon dies: the chunked answer never ends.
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	var events []Event
	_, err = NewClient(sock).CreateVM(context.Background(), CreateRequest{Name: "box"}, func(ev Event) { events = append(events, ev) })
	if err == nil || !strings.Contains(err.Error(), "bangerd went away before it finished") || !strings.Contains(err.Error(), "banger vm list") {
		t.Fatalf("CreateVM cut off = %v, want it to say bangerd went away and what to do", err)
	}
	if len(events) != 1 || events[0].Stage != "preparing disks" {
		t.Errorf("events before the cut = %+v", events)
	}
}
