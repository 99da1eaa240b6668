package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// fakeDaemon serves the part of bangerd's API the UI uses, from memory.
type fakeDaemon struct {
	mu        sync.Mutex
	vms       map[string]*rpc.VM
	images    map[string]rpc.Image
	creates   []rpc.CreateRequest
	registers []rpc.RegisterImageRequest
	gate      chan struct{} // when set, boots wait for it to close before finishing
	console   string
}

func newFakeDaemon() *fakeDaemon {
	return &fakeDaemon{
		vms: map[string]*rpc.VM{},
		images: map[string]rpc.Image{
			"docker":  {Name: "docker", Rootfs: "/rt/rootfs-docker.ext4", WorkSeed: "/rt/work-seed.ext4", Default: true, Managed: true, Size: 2 << 30},
			"minimal": {Name: "minimal", Rootfs: "/rt/rootfs-minimal.ext4", WorkSeed: "/rt/work-seed.ext4", Managed: true, Size: 300 << 20},
		},
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

func (f *fakeDaemon) lookup(name string) (rpc.VM, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[name]
	if !ok {
		return rpc.VM{}, false
	}
	return *vm, true
}

func fakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fakeNotFound(w http.ResponseWriter, what, name string) {
	fakeJSON(w, http.StatusNotFound, rpc.Error{Message: fmt.Sprintf("%s %q not found", what, name), Code: rpc.CodeNotFound})
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
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	vm := f.vms[name]
	vm.State = "running"
	vm.Stages = []rpc.Stage{{Name: "prepare", DurationMS: 400}, {Name: "boot", DurationMS: 3100}}
	cp := *vm
	f.mu.Unlock()
	send(rpc.Event{Type: "stage_done", Stage: "boot", DurationMS: 3100})
	send(rpc.Event{Type: "done", VM: &cp})
}

func (f *fakeDaemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		out := []rpc.VM{}
		for _, vm := range f.vms {
			out = append(out, *vm)
		}
		f.mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].Name > out[j].Name }) // the UI sorts
		fakeJSON(w, 200, out)
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := f.lookup(r.PathValue("name"))
		if !ok {
			fakeNotFound(w, "vm", r.PathValue("name"))
			return
		}
		fakeJSON(w, 200, vm)
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req rpc.CreateRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fakeJSON(w, 400, rpc.Error{Message: err.Error(), Code: rpc.CodeInvalid})
			return
		}
		f.mu.Lock()
		f.creates = append(f.creates, req)
		if _, ok := f.vms[req.Name]; ok {
			f.mu.Unlock()
			fakeJSON(w, 409, rpc.Error{Message: fmt.Sprintf("vm %q already exists", req.Name), Code: rpc.CodeExists})
			return
		}
		f.vms[req.Name] = &rpc.VM{Name: req.Name, Image: "docker", State: "creating", IP: "172.30.0.9", VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, NAT: req.NAT, CreatedAt: time.Now()}
		f.mu.Unlock()
		f.boot(w, r, req.Name)
	})
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.lookup(r.PathValue("name")); !ok {
			fakeNotFound(w, "vm", r.PathValue("name"))
			return
		}
		f.boot(w, r, r.PathValue("name"))
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		vm, ok := f.vms[name]
		var cp rpc.VM
		if ok {
			vm.State = "stopped"
			cp = *vm
		}
		f.mu.Unlock()
		if !ok {
			fakeNotFound(w, "vm", name)
			return
		}
		fakeJSON(w, 200, cp)
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		_, ok := f.vms[name]
		delete(f.vms, name)
		f.mu.Unlock()
		if !ok {
			fakeNotFound(w, "vm", name)
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
		var cp rpc.VM
		if ok {
			if req.NAT != nil {
				vm.NAT = *req.NAT
			}
			cp = *vm
		}
		f.mu.Unlock()
		if !ok {
			fakeNotFound(w, "vm", name)
			return
		}
		fakeJSON(w, 200, cp)
	})
	mux.HandleFunc("GET /v1/vms/{name}/logs", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.lookup(r.PathValue("name")); !ok {
			fakeNotFound(w, "vm", r.PathValue("name"))
			return
		}
		f.mu.Lock()
		c := f.console
		f.mu.Unlock()
		fmt.Fprint(w, c)
	})
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		out := []rpc.Image{}
		for _, img := range f.images {
			out = append(out, img)
		}
		f.mu.Unlock()
		fakeJSON(w, 200, out)
	})
	mux.HandleFunc("POST /v1/images", func(w http.ResponseWriter, r *http.Request) {
		var req rpc.RegisterImageRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.registers = append(f.registers, req)
		if !strings.HasSuffix(req.Rootfs, ".ext4") {
			fakeJSON(w, 400, rpc.Error{Message: fmt.Sprintf("%s is not an ext4 image", req.Rootfs), Code: rpc.CodeInvalid})
			return
		}
		img := rpc.Image{Name: req.Name, Rootfs: req.Rootfs, WorkSeed: req.WorkSeed, Size: 1 << 30}
		f.images[req.Name] = img
		fakeJSON(w, 200, img)
	})
	mux.HandleFunc("DELETE /v1/images/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		_, ok := f.images[name]
		delete(f.images, name)
		f.mu.Unlock()
		if !ok {
			fakeNotFound(w, "image", name)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// startFake serves a fake bangerd on a unix socket in the test's temp dir.
func startFake(t *testing.T) (*fakeDaemon, *rpc.Client) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatalf("listening on %s: %v", socket, err)
	}
	f := newFakeDaemon()
	srv := &http.Server{Handler: f.handler()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("fake bangerd: %v", err)
		}
	}()
	t.Cleanup(func() {
		f.mu.Lock()
		if f.gate != nil {
			select {
			case <-f.gate:
			default:
				close(f.gate)
			}
		}
		f.mu.Unlock()
		srv.Close()
		<-done
	})
	return f, rpc.NewClient(socket)
}
