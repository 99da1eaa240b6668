package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// fakeDaemon serves bangerd's API from memory.
type fakeDaemon struct {
	mu       sync.Mutex
	vms      map[string]*rpc.VM
	creates  []rpc.CreateRequest
	delay    map[string]time.Duration // per-VM delay of stop
	failBoot map[string]string        // VM name -> error event message
	hang     map[string]bool          // VM name -> boot never ends
	shutdown chan struct{}
	once     sync.Once
}

func newFakeDaemon() *fakeDaemon {
	return &fakeDaemon{
		vms:      map[string]*rpc.VM{},
		delay:    map[string]time.Duration{},
		failBoot: map[string]string{},
		hang:     map[string]bool{},
		shutdown: make(chan struct{}),
	}
}

func (f *fakeDaemon) add(vm rpc.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = time.Now().Add(-5 * time.Minute)
	}
	f.vms[vm.Name] = &vm
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter, name string) {
	writeJSON(w, http.StatusNotFound, rpc.Error{Message: fmt.Sprintf("vm %q not found", name), Code: rpc.CodeNotFound})
}

// lookup returns a copy of the named VM.
func (f *fakeDaemon) lookup(name string) (rpc.VM, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[name]
	if !ok {
		return rpc.VM{}, false
	}
	return *vm, true
}

// boot streams the events of a create or start.
func (f *fakeDaemon) boot(w http.ResponseWriter, r *http.Request, name string) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	send := func(ev rpc.Event) {
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
	send(rpc.Event{Type: "stage", Stage: "prepare"})
	send(rpc.Event{Type: "stage_done", Stage: "prepare", DurationMS: 400})
	send(rpc.Event{Type: "stage", Stage: "boot"})
	send(rpc.Event{Type: "log", Message: "kernel up"})
	f.mu.Lock()
	hang := f.hang[name]
	f.mu.Unlock()
	if hang {
		<-r.Context().Done()
		return
	}
	f.mu.Lock()
	msg := f.failBoot[name]
	vm := f.vms[name]
	if msg == "" {
		vm.State = "running"
		vm.Stages = []rpc.Stage{{Name: "prepare", DurationMS: 400}, {Name: "boot", DurationMS: 3100}}
	} else {
		vm.State = "error"
	}
	cp := *vm
	f.mu.Unlock()
	if msg != "" {
		send(rpc.Event{Type: "error", Error: msg, Code: rpc.CodeInternal, VM: &cp})
		return
	}
	send(rpc.Event{Type: "stage_done", Stage: "boot", DurationMS: 3100})
	send(rpc.Event{Type: "done", VM: &cp})
}

func (f *fakeDaemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, rpc.Status{Version: "fake", PID: os.Getpid(), Hypervisor: "qemu", VMs: len(f.vms)})
	})
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]bool{"ok": true})
		f.once.Do(func() { close(f.shutdown) })
	})
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		out := []rpc.VM{}
		for _, vm := range f.vms {
			out = append(out, *vm)
		}
		f.mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		writeJSON(w, 200, out)
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := f.lookup(r.PathValue("name"))
		if !ok {
			notFound(w, r.PathValue("name"))
			return
		}
		writeJSON(w, 200, vm)
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req rpc.CreateRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, 400, rpc.Error{Message: err.Error(), Code: rpc.CodeInvalid})
			return
		}
		f.mu.Lock()
		f.creates = append(f.creates, req)
		if _, ok := f.vms[req.Name]; ok {
			f.mu.Unlock()
			writeJSON(w, 409, rpc.Error{Message: fmt.Sprintf("vm %q already exists", req.Name), Code: rpc.CodeExists})
			return
		}
		f.vms[req.Name] = &rpc.VM{Name: req.Name, Image: "docker", State: "creating", IP: "172.30.0.2", VCPUs: 2, MemoryMiB: 1024, CreatedAt: time.Now()}
		f.mu.Unlock()
		f.boot(w, r, req.Name)
	})
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.lookup(r.PathValue("name")); !ok {
			notFound(w, r.PathValue("name"))
			return
		}
		f.boot(w, r, r.PathValue("name"))
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		d := f.delay[name]
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
		vm, ok := f.vms[name]
		if ok {
			vm.State = "stopped"
		}
		f.mu.Unlock()
		if !ok {
			notFound(w, name)
			return
		}
		writeJSON(w, 200, vm)
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		_, ok := f.vms[name]
		delete(f.vms, name)
		f.mu.Unlock()
		if !ok {
			notFound(w, name)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/vms/{name}/set", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		var req struct{ NAT *bool }
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		vm, ok := f.vms[name]
		if ok && req.NAT != nil {
			vm.NAT = *req.NAT
		}
		f.mu.Unlock()
		if !ok {
			notFound(w, name)
			return
		}
		writeJSON(w, 200, vm)
	})
	mux.HandleFunc("GET /v1/vms/{name}/ssh", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := f.lookup(r.PathValue("name"))
		if !ok {
			notFound(w, r.PathValue("name"))
			return
		}
		writeJSON(w, 200, rpc.SSHInfo{Name: vm.Name, IP: vm.IP, User: "root", KeyPath: "/b/id_ed25519", KnownHosts: "/s/known_hosts", HostAlias: "banger-" + vm.Name, State: vm.State})
	})
	mux.HandleFunc("GET /v1/vms/{name}/logs", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.lookup(r.PathValue("name")); !ok {
			notFound(w, r.PathValue("name"))
			return
		}
		fmt.Fprintf(w, "console of %s\n", r.PathValue("name"))
	})
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, []rpc.Image{{Name: "docker", Rootfs: "rootfs-docker.ext4", Default: true, Size: 2 << 30}, {Name: "minimal", Rootfs: "rootfs-minimal.ext4", Size: 300 << 20}})
	})
	return mux
}

// shortTempDir returns a directory short enough for a unix socket path.
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// listen opens the fake's socket.
func listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	return net.Listen("unix", socket)
}

// serve runs f on ln until ctx ends or a shutdown request.
func (f *fakeDaemon) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: f.handler()}
	go func() {
		select {
		case <-ctx.Done():
		case <-f.shutdown:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// startFake serves a fake daemon for the test and returns its socket.
func startFake(t *testing.T) (*fakeDaemon, string) {
	t.Helper()
	socket := filepath.Join(shortTempDir(t), "d.sock")
	ln, err := listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeDaemon()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.serve(ctx, ln); err != nil {
			t.Errorf("fake daemon: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f, socket
}

// runFakeDaemonProcess is the body of the test binary re-executed as bangerd.
func runFakeDaemonProcess() {
	socket := ""
	for i, a := range os.Args {
		if a == "--socket" && i+1 < len(os.Args) {
			socket = os.Args[i+1]
		}
	}
	if socket == "" {
		fmt.Fprintln(os.Stderr, "fake bangerd: --socket missing")
		os.Exit(2)
	}
	fmt.Println("fake bangerd listening on", socket)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, err := listen(socket)
	if err == nil {
		err = newFakeDaemon().serve(ctx, ln)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake bangerd:", err)
		os.Exit(1)
	}
	os.Remove(socket)
	os.Exit(0)
}

func TestMain(m *testing.M) {
	if os.Getenv("BANGER_FAKE_DAEMON") == "1" {
		runFakeDaemonProcess()
	}
	os.Exit(m.Run())
}
