package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", d.handleStatus)
	mux.HandleFunc("POST /v1/shutdown", d.handleShutdown)
	mux.HandleFunc("GET /v1/vms", d.handleList)
	mux.HandleFunc("POST /v1/vms", d.handleCreate)
	mux.HandleFunc("GET /v1/vms/{name}", d.handleShow)
	mux.HandleFunc("DELETE /v1/vms/{name}", d.handleDelete)
	mux.HandleFunc("POST /v1/vms/{name}/start", d.handleStart)
	mux.HandleFunc("POST /v1/vms/{name}/stop", d.handleStop)
	mux.HandleFunc("POST /v1/vms/{name}/set", d.handleSet)
	mux.HandleFunc("GET /v1/vms/{name}/ssh", d.handleSSH)
	mux.HandleFunc("GET /v1/vms/{name}/opencode", d.handleOpencode)
	mux.HandleFunc("GET /v1/vms/{name}/logs", d.handleLogs)
	mux.HandleFunc("GET /v1/images", d.handleImages)
	mux.HandleFunc("POST /v1/images", d.handleRegisterImage)
	mux.HandleFunc("POST /v1/images/build", d.handleBuildImage)
	mux.HandleFunc("DELETE /v1/images/{name}", d.handleDeleteImage)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (d *Daemon) writeErr(w http.ResponseWriter, err error) {
	code, status := codeOf(err)
	if status == 500 {
		d.log.Error("request failed", "err", err)
	}
	writeJSON(w, status, rpc.Error{Message: err.Error(), Code: code})
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := rpc.Status{
		Version:    Version,
		PID:        os.Getpid(),
		StartedAt:  d.started,
		Socket:     d.paths.Socket,
		StateDir:   d.paths.StateDir,
		DataDir:    d.paths.DataDir,
		RuntimeDir: d.paths.RuntimeDir,
	}
	b, err := d.loadBundle()
	if err == nil {
		st.Bundle = b.Dir()
	}
	if be, err := d.pickBackend(b); err == nil {
		st.Hypervisor = be.Name()
	}
	if vms, err := d.store.ListVMs(r.Context()); err == nil {
		st.VMs = len(vms)
		for _, vm := range vms {
			if vm.State == StateRunning {
				st.Running++
			}
		}
	}
	writeJSON(w, 200, st)
}

func (d *Daemon) handleShutdown(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]bool{"ok": true})
	d.shutdownOnce.Do(func() { close(d.shutdown) })
}

func (d *Daemon) handleList(w http.ResponseWriter, r *http.Request) {
	vms, err := d.store.ListVMs(r.Context())
	if err != nil {
		d.writeErr(w, err)
		return
	}
	out := []rpc.VM{}
	for i := range vms {
		out = append(out, *d.view(r.Context(), &vms[i]))
	}
	writeJSON(w, 200, out)
}

func (d *Daemon) handleShow(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		d.writeErr(w, err)
		return
	}
	writeJSON(w, 200, d.view(r.Context(), vm))
}

// stream runs op under the daemon's lifetime and forwards its events to the
// client as NDJSON. If the client goes away, op carries on.
func (d *Daemon) stream(w http.ResponseWriter, r *http.Request, op func(pr *progress) (*store.VM, error)) {
	d.streamEvents(w, r, func(pr *progress) (rpc.Event, error) {
		vm, err := op(pr)
		var done rpc.Event
		if vm != nil {
			done.VM = d.view(d.ctx, vm)
		}
		return done, err
	})
}

// streamEvents is stream for any operation: op returns the final event.
func (d *Daemon) streamEvents(w http.ResponseWriter, r *http.Request, op func(pr *progress) (rpc.Event, error)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	events := make(chan rpc.Event, 256)
	pr := newProgress(func(ev rpc.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	// The last event goes through its own channel: progress events may be
	// dropped for a slow reader, the outcome never is.
	final := make(chan rpc.Event, 1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		done, err := op(pr)
		pr.close()
		final <- finalEvent(done, err)
		close(events)
	}()
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				enc.Encode(<-final)
				return
			}
			if enc.Encode(ev) != nil {
				pr.detach()
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		case <-r.Context().Done():
			pr.detach()
			return
		}
	}
}

func (d *Daemon) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req rpc.CreateRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		d.writeErr(w, invalid("decoding create request: %w", err))
		return
	}
	if err := ValidateName(req.Name); err != nil {
		d.writeErr(w, invalid("%w", err))
		return
	}
	// The name lock is held from validation to the end of the create, so a
	// concurrent create of the same name waits and then sees it exists.
	l := d.vmLock(req.Name)
	l.Lock()
	plan, err := d.planCreate(r.Context(), req)
	if err != nil {
		l.Unlock()
		d.writeErr(w, err)
		return
	}
	d.stream(w, r, func(pr *progress) (*store.VM, error) {
		defer l.Unlock()
		vm, err := d.create(plan, pr)
		if err != nil {
			d.log.Error("create failed", "vm", req.Name, "err", err)
		} else {
			d.log.Info("created VM", "vm", vm.Name, "ip", vm.IP, "stages", pr.stages())
		}
		return vm, err
	})
}

func (d *Daemon) handleStart(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := d.getVM(r.Context(), name); err != nil {
		d.writeErr(w, err)
		return
	}
	d.stream(w, r, func(pr *progress) (*store.VM, error) {
		return d.start(name, pr)
	})
}

func (d *Daemon) handleStop(w http.ResponseWriter, r *http.Request) {
	vm, err := d.stop(r.PathValue("name"))
	if err != nil {
		d.writeErr(w, err)
		return
	}
	writeJSON(w, 200, d.view(r.Context(), vm))
}

func (d *Daemon) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := d.remove(r.PathValue("name")); err != nil {
		d.writeErr(w, err)
		return
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (d *Daemon) handleSet(w http.ResponseWriter, r *http.Request) {
	var req struct {
		NAT *bool `json:"nat"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		d.writeErr(w, invalid("decoding set request: %w", err))
		return
	}
	vm, err := d.set(r.PathValue("name"), req.NAT)
	if err != nil {
		d.writeErr(w, err)
		return
	}
	writeJSON(w, 200, d.view(r.Context(), vm))
}

// set changes a VM's settings.
func (d *Daemon) set(name string, nat *bool) (*store.VM, error) {
	vm, unlock, err := d.lockVM(d.ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if nat != nil && *nat != vm.NAT && (*nat || vm.State == StateRunning || vm.State == StateStarting) {
		if err := doctor.Require(d.ctx, d.r, doctor.OpNAT); err != nil {
			return nil, unavailable(err)
		}
	}
	if nat != nil && *nat != vm.NAT {
		vm.NAT = *nat
		if vm.State == StateRunning || vm.State == StateStarting {
			if err := d.applyNAT(d.ctx, vm); err != nil {
				return nil, fmt.Errorf("changing NAT of %s: %w", vm.Name, err)
			}
		}
	}
	return vm, d.store.UpdateVM(d.ctx, vm)
}

func (d *Daemon) handleSSH(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		d.writeErr(w, err)
		return
	}
	b, err := d.loadBundle()
	if err != nil {
		d.writeErr(w, unavailable(err))
		return
	}
	writeJSON(w, 200, rpc.SSHInfo{
		Name:       vm.Name,
		IP:         vm.IP,
		User:       "root",
		KeyPath:    b.Path(b.SSHKey),
		KnownHosts: d.paths.KnownHosts,
		HostAlias:  vm.Name + ".vm",
		State:      vm.State,
	})
}

// handleOpencode answers with the URL and credentials of a VM's opencode
// server. Only this endpoint carries the password: VM views do not.
func (d *Daemon) handleOpencode(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		d.writeErr(w, err)
		return
	}
	pw := opencodePassword(vm)
	if pw == "" {
		d.writeErr(w, notFound("VM %s has no opencode password: its image (%s) does not run banger's opencode server", vm.Name, vm.Image))
		return
	}
	writeJSON(w, 200, rpc.OpencodeAuth{URL: fmt.Sprintf("http://%s.vm:%d", vm.Name, opencode.Port), User: "opencode", Password: pw})
}

func (d *Daemon) handleLogs(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		d.writeErr(w, err)
		return
	}
	f, err := os.Open(filepath.Join(vm.Dir, "console.log"))
	if err != nil {
		d.writeErr(w, notFound("VM %s has no console log yet: start it first", vm.Name))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.Copy(w, f)
	if r.URL.Query().Get("follow") == "" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-d.ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
	}
}

func (d *Daemon) handleImages(w http.ResponseWriter, r *http.Request) {
	b, err := d.loadBundle()
	if err != nil {
		d.writeErr(w, unavailable(err))
		return
	}
	def := d.cfg.DefaultImage
	if def == "" {
		def = b.DefaultImage
	}
	out := []rpc.Image{}
	for _, img := range b.Images {
		size, _ := disk.Size(b.Path(img.Rootfs))
		out = append(out, rpc.Image{Name: img.Name, Rootfs: b.Path(img.Rootfs), WorkSeed: b.Path(img.WorkSeed), Default: img.Name == def, Managed: true, Size: size})
	}
	reg, err := d.store.ListImages(r.Context())
	if err != nil {
		d.writeErr(w, err)
		return
	}
	for _, img := range reg {
		size, _ := disk.Size(img.Rootfs)
		out = append(out, rpc.Image{Name: img.Name, Rootfs: img.Rootfs, WorkSeed: img.WorkSeed, Default: img.Name == def, Size: size})
	}
	writeJSON(w, 200, out)
}

func (d *Daemon) handleRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req rpc.RegisterImageRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		d.writeErr(w, invalid("decoding register request: %w", err))
		return
	}
	img, err := d.registerImage(r.Context(), req)
	if err != nil {
		d.writeErr(w, err)
		return
	}
	size, _ := disk.Size(img.Rootfs)
	writeJSON(w, 200, rpc.Image{Name: img.Name, Rootfs: img.Rootfs, WorkSeed: img.WorkSeed, Size: size})
}

func (d *Daemon) handleDeleteImage(w http.ResponseWriter, r *http.Request) {
	if err := d.deleteImage(r.Context(), r.PathValue("name")); err != nil {
		d.writeErr(w, err)
		return
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}
