// Package rpctest serves a fake bangerd API on a unix socket for tests of its clients.
package rpctest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
	"github.com/banger/banger/internal/vm"
)

// What the fake reports where bangerd reports its host's paths and config.
const (
	bundleDir        = "/rt"    // the runtime bundle: images and the ssh key
	stateDir         = "/state" // known_hosts
	dataDir          = "/data"
	hypervisor       = "qemu"
	defaultImage     = "docker" // marked Default in bundleImages
	defaultVCPUs     = 2        // bangerd's built-in config
	defaultMemoryMiB = 1024     // likewise
	defaultWorkSize  = 16 << 30 // likewise
)

// bundleImages are the images of the fake's runtime bundle.
var bundleImages = []rpc.Image{
	{Name: "docker", Rootfs: bundleDir + "/rootfs-docker.ext4", WorkSeed: bundleDir + "/work-seed.ext4", Default: true, Managed: true, Size: 2 << 30, KernelVersion: bundletest.KernelVersion, Warm: "none"},
	{Name: "minimal", Rootfs: bundleDir + "/rootfs-minimal.ext4", WorkSeed: bundleDir + "/work-seed.ext4", Managed: true, Size: 300 << 20, KernelVersion: bundletest.KernelVersion, Warm: "none"},
}

// Fake is bangerd's API over state in memory: the same routes, status codes,
// error JSON ({"error", "code"}) and NDJSON event streams as the daemon, with
// VMs that boot at once and images that are only names and paths.
//
// It starts with no VMs and the bundle images docker (the default, under
// /rt) and minimal. Every create or start streams the stage "prepare"
// (0.4s), the stage "boot" with a log line "kernel up", then "done" with the
// running VM; FailBoot, Hold and DelayStop change that for one VM. Created
// VMs get the next free address from 172.30.0.2, and 2 vCPUs and 1024 MiB
// unless asked otherwise, and a 16G /root. A running VM suspends at once;
// a resume, or a start of a suspended VM, streams as a start does; a fork
// streams as a create of the copy does; warming an image streams the stage
// "snapshot" and makes it warm ("ready"). A VM's console log reads
// "console of NAME\n" unless SetConsole says otherwise. Published ports
// are checked as bangerd checks them (a host port that something on this
// host listens on is busy) and listening while their VM runs, but nothing
// is relayed. A registered path must be what bangerd
// takes for an ext4 image (ext4.Check; ext4.WriteMagic makes one).
//
// Its methods are safe to call while it serves.
type Fake struct {
	// Socket is the unix socket the fake serves on.
	Socket string
	// ReverseVMs lists VMs in descending name order, where bangerd lists
	// them in ascending order, so that a test can check that its client
	// sorts them. Set it before the first request.
	ReverseVMs bool

	mu        sync.Mutex
	started   time.Time
	lastID    int
	vms       map[string]*rpc.VM   // by name
	images    map[string]rpc.Image // registered images, by name
	creates   []rpc.CreateRequest
	registers []rpc.RegisterImageRequest
	failBoot  map[string]string
	holds     map[string]*hold
	stopDelay map[string]time.Duration
	consoles  map[string]string
	// consoleServed counts the console bytes answered.
	consoleServed int
	opencode      map[string]string // opencode passwords, by VM name
	warm          map[string]string // images' warm states, by name

	shutdown     chan struct{} // closed by POST /v1/shutdown
	shutdownOnce sync.Once
}

// New returns a fake that does not serve yet; see Start and ListenAndServe.
func New() *Fake {
	return &Fake{
		started:   time.Now(),
		vms:       map[string]*rpc.VM{},
		images:    map[string]rpc.Image{},
		failBoot:  map[string]string{},
		holds:     map[string]*hold{},
		stopDelay: map[string]time.Duration{},
		consoles:  map[string]string{},
		opencode:  map[string]string{},
		warm:      map[string]string{},
		shutdown:  make(chan struct{}),
	}
}

// Start serves a new fake on a socket in a fresh TempDir until the test
// ends (or a client asks it to shut down), then releases its held boots.
func Start(t testing.TB) *Fake {
	t.Helper()
	f := New()
	f.Socket = filepath.Join(TempDir(t), "bangerd.sock")
	ln, err := listen(f.Socket)
	if err != nil {
		t.Fatalf("rpctest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.serve(ctx, ln); err != nil {
			t.Errorf("rpctest: serving %s: %v", f.Socket, err)
		}
	}()
	t.Cleanup(func() {
		f.releaseHolds()
		cancel()
		<-done
	})
	return f
}

// ListenAndServe serves f on socket, creating its directory, until ctx ends
// or a client asks it to shut down. It is for a test binary that plays
// bangerd in a process of its own.
func (f *Fake) ListenAndServe(ctx context.Context, socket string) error {
	f.Socket = socket
	ln, err := listen(socket)
	if err != nil {
		return err
	}
	defer os.Remove(socket)
	return f.serve(ctx, ln)
}

// Client returns a client of the fake.
func (f *Fake) Client() *rpc.Client { return rpc.NewClient(f.Socket) }

// TempDir returns a new directory, removed when the test ends, with a path
// short enough for unix sockets in it (t.TempDir's can be too long).
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	return net.Listen("unix", socket)
}

// serve answers on ln until ctx ends or a client asks for shutdown, then
// waits (a little) for the answers under way.
func (f *Fake) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: f.handler()}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	case <-f.shutdown:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	srv.Close()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Add records vm as it is given, with an id and a creation time 5 minutes
// ago if it has none.
func (f *Fake) Add(vm rpc.VM) {
	if vm.Egress == "" {
		vm.Egress = "default"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if vm.ID == "" {
		vm.ID = f.newID()
	}
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = time.Now().Add(-5 * time.Minute)
	}
	// As in bangerd, only GET /v1/vms/{name}/opencode carries the password.
	if vm.OpencodePassword != "" {
		f.opencode[vm.Name] = vm.OpencodePassword
		vm.OpencodePassword = ""
	}
	f.vms[vm.Name] = &vm
}

// VM returns the named VM as the fake holds it now.
func (f *Fake) VM(name string) (rpc.VM, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[name]
	if !ok {
		return rpc.VM{}, false
	}
	return *vm, true
}

// Image returns the named image, from the bundle or registered.
func (f *Fake) Image(name string) (rpc.Image, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.image(name)
}

// Creates returns every create request the fake decoded, refused or not.
func (f *Fake) Creates() []rpc.CreateRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.creates)
}

// Registers returns every image register request the fake decoded,
// refused or not.
func (f *Fake) Registers() []rpc.RegisterImageRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.registers)
}

// FailBoot makes creates and starts of the named VM fail at the end of the
// boot stage, as bangerd's readiness checks do: the stream ends with an
// error event (code internal) carrying msg and the VM, left in the error
// state. An empty msg lets them succeed again.
func (f *Fake) FailBoot(name, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failBoot[name] = msg
}

// Hold stops boots of the named VM after the "kernel up" log line until
// release is called (or the fake stops serving). As in bangerd, a boot whose
// client went away carries on, and finishes on release.
func (f *Fake) Hold(name string) (release func()) {
	h := &hold{ch: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds[name] = h
	return h.release
}

// DelayStop makes stopping the named VM take d, during which it is stopping.
func (f *Fake) DelayStop(name string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopDelay[name] = d
}

// SetConsole sets what the named VM's console log reads.
func (f *Fake) SetConsole(name, text string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.consoles[name] = text
}

// ConsoleBytesServed returns how many console log bytes f has answered.
func (f *Fake) ConsoleBytesServed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.consoleServed
}

// hold is a boot waiting for release.
type hold struct {
	ch   chan struct{}
	once sync.Once
}

func (h *hold) release() { h.once.Do(func() { close(h.ch) }) }

func (f *Fake) releaseHolds() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.holds {
		h.release()
	}
}

func (f *Fake) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", f.handleStatus)
	mux.HandleFunc("POST /v1/shutdown", f.handleShutdown)
	mux.HandleFunc("GET /v1/vms", f.handleList)
	mux.HandleFunc("POST /v1/vms", f.handleCreate)
	mux.HandleFunc("GET /v1/vms/{name}", f.withVM(func(vm *rpc.VM) any { return view(vm) }))
	mux.HandleFunc("DELETE /v1/vms/{name}", f.withVM(func(vm *rpc.VM) any {
		delete(f.vms, vm.Name)
		return map[string]bool{"ok": true}
	}))
	mux.HandleFunc("POST /v1/vms/{name}/start", f.handleStart)
	mux.HandleFunc("POST /v1/vms/{name}/stop", f.handleStop)
	mux.HandleFunc("POST /v1/vms/{name}/set", f.handleSet)
	mux.HandleFunc("POST /v1/vms/{name}/suspend", f.handleSuspend)
	mux.HandleFunc("POST /v1/vms/{name}/resume", f.handleResume)
	mux.HandleFunc("POST /v1/vms/{name}/fork", f.handleFork)
	mux.HandleFunc("POST /v1/vms/{name}/ports", f.handleAddPorts)
	mux.HandleFunc("POST /v1/vms/{name}/ports/remove", f.handleRemovePorts)
	mux.HandleFunc("GET /v1/vms/{name}/ssh", f.withVM(sshInfo))
	mux.HandleFunc("GET /v1/vms/{name}/opencode", f.handleOpencode)
	mux.HandleFunc("GET /v1/vms/{name}/logs", f.handleLogs)
	mux.HandleFunc("GET /v1/images", f.handleImages)
	mux.HandleFunc("POST /v1/images", f.handleRegisterImage)
	mux.HandleFunc("DELETE /v1/images/{name}", f.handleDeleteImage)
	mux.HandleFunc("POST /v1/images/{name}/warm", f.handleWarmImage)
	return mux
}

// apiError is an error answer: its code gives its HTTP status, as in bangerd.
func apiError(code, format string, a ...any) *rpc.Error {
	return &rpc.Error{Message: fmt.Sprintf(format, a...), Code: code}
}

var statusOf = map[string]int{
	rpc.CodeInvalid:     http.StatusBadRequest,
	rpc.CodeNotFound:    http.StatusNotFound,
	rpc.CodeExists:      http.StatusConflict,
	rpc.CodeUnavailable: http.StatusServiceUnavailable,
	rpc.CodeInternal:    http.StatusInternalServerError,
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, e *rpc.Error) { writeJSON(w, statusOf[e.Code], e) }

func writeOK(w http.ResponseWriter) { writeJSON(w, http.StatusOK, map[string]bool{"ok": true}) }

// decode reads a JSON body that is one object, refusing unknown fields and
// trailing data as bangerd does.
func decode(r *http.Request, what string, v any) *rpc.Error {
	dec := json.NewDecoder(r.Body)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return apiError(rpc.CodeInvalid, "decoding %s request: %v", what, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return apiError(rpc.CodeInvalid, "decoding %s request: data after the JSON object", what)
	}
	if raw[0] != '{' {
		return apiError(rpc.CodeInvalid, "decoding %s request: the body is not a JSON object", what)
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return apiError(rpc.CodeInvalid, "decoding %s request: %v", what, err)
	}
	return nil
}

// find returns the VM called nameOrID, under f.mu.
func (f *Fake) find(nameOrID string) (*rpc.VM, *rpc.Error) {
	if vm, ok := f.vms[nameOrID]; ok {
		return vm, nil
	}
	for _, vm := range f.vms {
		if vm.ID == nameOrID {
			return vm, nil
		}
	}
	return nil, apiError(rpc.CodeNotFound, "no VM named %s: see 'banger vm list'", nameOrID)
}

// withVM answers what view makes of the VM the path names; view runs
// under f.mu and may change the VM.
func (f *Fake) withVM(view func(*rpc.VM) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		vm, e := f.find(r.PathValue("name"))
		var v any
		if e == nil {
			v = view(vm)
		}
		f.mu.Unlock()
		if e != nil {
			writeErr(w, e)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func sshInfo(vm *rpc.VM) any {
	return rpc.SSHInfo{Name: vm.Name, IP: vm.IP, User: "root", KeyPath: bundleDir + "/id_ed25519",
		KnownHosts: stateDir + "/known_hosts", HostAlias: vm.Name + ".vm", State: vm.State}
}

func (f *Fake) handleStatus(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	st := rpc.Status{Version: "fake", PID: os.Getpid(), StartedAt: f.started, Socket: f.Socket,
		StateDir: stateDir, DataDir: dataDir, RuntimeDir: filepath.Dir(f.Socket),
		Hypervisor: hypervisor, Bundle: bundleDir, VMs: len(f.vms)}
	for _, vm := range f.vms {
		if vm.State == "running" {
			st.Running++
		}
	}
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}

func (f *Fake) handleShutdown(w http.ResponseWriter, r *http.Request) {
	writeOK(w)
	f.shutdownOnce.Do(func() { close(f.shutdown) })
}

func (f *Fake) handleList(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	out := []rpc.VM{}
	for _, vm := range f.vms {
		out = append(out, view(vm))
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b rpc.VM) int { return strings.Compare(a.Name, b.Name) })
	if f.ReverseVMs {
		slices.Reverse(out)
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Fake) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req rpc.CreateRequest
	e := decode(r, "create", &req)
	if e == nil {
		e = f.create(req)
	}
	if e != nil {
		writeErr(w, e)
		return
	}
	f.boot(w, r, req.Name)
}

// create records a create request and, if bangerd would accept it, its VM.
func (f *Fake) create(req rpc.CreateRequest) *rpc.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	vm, e := f.planCreate(req)
	if e == nil {
		f.vms[vm.Name] = vm
	}
	return e
}

// view is what the API answers for vm: its ports listen while it runs.
func view(vm *rpc.VM) rpc.VM {
	v := *vm
	v.Ports = []rpc.Port{}
	for _, p := range vm.Ports {
		p.Listening = vm.State == "running" || vm.State == "starting"
		v.Ports = append(v.Ports, p)
	}
	return v
}

// specs checks ports as bangerd's API does: proto "" is tcp, host_ip ""
// is 127.0.0.1.
func specs(ports []rpc.Port) ([]portfwd.Spec, *rpc.Error) {
	if len(ports) > portfwd.MaxPerVM {
		return nil, apiError(rpc.CodeInvalid, "publishing %d ports: a VM publishes at most %d", len(ports), portfwd.MaxPerVM)
	}
	var out []portfwd.Spec
	for _, p := range ports {
		s := portfwd.Spec{Proto: cmp.Or(p.Proto, portfwd.TCP), HostIP: portfwd.DefaultHostIP}
		if p.HostIP != "" {
			ip, err := netip.ParseAddr(p.HostIP)
			if err != nil {
				return nil, apiError(rpc.CodeInvalid, "invalid port: host_ip %q is not an IP address", p.HostIP)
			}
			s.HostIP = ip
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 {
			return nil, apiError(rpc.CodeInvalid, "invalid port %d:%d: ports are 1 to 65535", p.HostPort, p.GuestPort)
		}
		s.HostPort, s.GuestPort = uint16(p.HostPort), uint16(p.GuestPort)
		if err := s.Validate(); err != nil {
			return nil, apiError(rpc.CodeInvalid, "%v", err)
		}
		out = append(out, s)
	}
	return out, nil
}

// specsOf reads a VM's ports back.
func specsOf(vm *rpc.VM) []portfwd.Spec {
	out, _ := specs(vm.Ports)
	return out
}

// checkPorts refuses add, wanted by the VM self ("" for a new one) on top
// of have, as bangerd does, under f.mu: overlapping each other (invalid),
// another VM's (exists), or busy on this host (exists, checked by
// listening a moment).
func (f *Fake) checkPorts(self string, have, add []portfwd.Spec) *rpc.Error {
	if err := portfwd.Check(append(slices.Clone(have), add...)); err != nil {
		return apiError(rpc.CodeInvalid, "%v", err)
	}
	for name, other := range f.vms {
		if name == self {
			continue
		}
		for _, s := range add {
			for _, o := range specsOf(other) {
				if s.Overlaps(o) {
					return apiError(rpc.CodeExists, "host port %s/%s is published by VM %s already (as %s): pick another host port", s.Host(), s.Proto, name, o)
				}
			}
		}
	}
	for _, s := range add {
		if err := portfwd.Probe(s); err != nil {
			code := rpc.CodeInvalid
			if errors.Is(err, portfwd.ErrInUse) {
				code = rpc.CodeExists
			}
			return apiError(code, "%v", err)
		}
	}
	return nil
}

func portOf(s portfwd.Spec) rpc.Port {
	return rpc.Port{Proto: s.Proto, HostIP: s.HostIP.String(), HostPort: int(s.HostPort), GuestPort: int(s.GuestPort)}
}

// workSize reads a /root size as bangerd does.
func workSize(s string) (int64, *rpc.Error) {
	n, err := units.ParseSize(s)
	if err != nil || n <= 0 {
		return 0, apiError(rpc.CodeInvalid, "invalid --work-size %q", s)
	}
	return n, nil
}

// planCreate checks a create request as bangerd does, under f.mu, and
// returns the new VM.
func (f *Fake) planCreate(req rpc.CreateRequest) (*rpc.VM, *rpc.Error) {
	if err := vm.ValidateName(req.Name); err != nil {
		return nil, apiError(rpc.CodeInvalid, "%v", err)
	}
	if err := vm.ValidateShape(cmp.Or(req.VCPUs, defaultVCPUs), cmp.Or(req.MemoryMiB, defaultMemoryMiB), 0, hypervisor); err != nil {
		return nil, apiError(rpc.CodeInvalid, "%v", err)
	}
	if vm, ok := f.vms[req.Name]; ok {
		return nil, apiError(rpc.CodeExists, "a VM named %s already exists (%s): pick another name, or remove it with 'banger vm delete %s'", req.Name, vm.State, req.Name)
	}
	p, e := policy(req.Egress)
	if e != nil {
		return nil, e
	}
	image := cmp.Or(req.Image, defaultImage)
	if _, ok := f.image(image); !ok {
		return nil, apiError(rpc.CodeInvalid, "finding image %q in runtime bundle %s: no such image: use one of docker, minimal (or register one with 'banger image register --name %s --rootfs PATH')", image, bundleDir, image)
	}
	var asked []store.Mount
	for _, m := range req.Mounts {
		asked = append(asked, store.Mount{Host: m.Host, Guest: m.Guest, ReadOnly: m.ReadOnly})
	}
	kept, err := vm.ValidateMounts(asked, []string{bundleDir, stateDir, dataDir})
	if err != nil {
		return nil, apiError(rpc.CodeInvalid, "%v", err)
	}
	var mounts []rpc.Mount
	for _, m := range kept {
		mounts = append(mounts, rpc.Mount{Host: m.Host, Guest: m.Guest, ReadOnly: m.ReadOnly})
	}
	work := int64(defaultWorkSize)
	if req.WorkSize != "" {
		var e *rpc.Error
		if work, e = workSize(req.WorkSize); e != nil {
			return nil, e
		}
		if work < 64<<20 {
			return nil, apiError(rpc.CodeInvalid, "work size %s is smaller than the /root seed of image %s (64M): pick --work-size 64M or more", req.WorkSize, image)
		}
	}
	sp, e := specs(req.Ports)
	if e == nil {
		e = f.checkPorts("", nil, sp)
	}
	if e != nil {
		return nil, e
	}
	vm := &rpc.VM{ID: f.newID(), Name: req.Name, Image: image, State: "creating", Hypervisor: hypervisor, IP: f.freeIP(), NAT: req.NAT,
		Egress: "default", VCPUs: cmp.Or(req.VCPUs, defaultVCPUs), MemoryMiB: cmp.Or(req.MemoryMiB, defaultMemoryMiB), WorkSizeBytes: work, Mounts: mounts, CreatedAt: time.Now()}
	for _, s := range sp {
		vm.Ports = append(vm.Ports, portOf(s))
	}
	setPolicy(vm, p)
	return vm, nil
}

// policy reads a wire egress policy as bangerd does; nil for none.
func policy(w *rpc.Egress) (*egress.Policy, *rpc.Error) {
	if w == nil {
		return nil, nil
	}
	b, _ := json.Marshal(w)
	var p egress.Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, apiError(rpc.CodeInvalid, "invalid egress policy: %v", err)
	}
	return &p, nil
}

// setPolicy gives vm the policy p, which turns NAT on unless it is open.
func setPolicy(vm *rpc.VM, p *egress.Policy) {
	if p == nil {
		return
	}
	vm.Egress = p.String()
	if p.Effective() != egress.ModeOpen {
		vm.NAT = true
	}
}

// newID returns a new VM id, under f.mu.
func (f *Fake) newID() string {
	f.lastID++
	return fmt.Sprintf("%012x", f.lastID)
}

// freeIP returns the lowest address of 172.30.0.0/24 after the gateway that
// no VM has, under f.mu.
func (f *Fake) freeIP() string {
	used := map[string]bool{}
	for _, vm := range f.vms {
		used[vm.IP] = true
	}
	for i := 2; i < 255; i++ {
		if ip := fmt.Sprintf("172.30.0.%d", i); !used[ip] {
			return ip
		}
	}
	return ""
}

func (f *Fake) handleStart(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var cp rpc.VM
	if e == nil {
		cp = view(vm)
		switch vm.State {
		case "stopped", "error", "suspended":
			vm.State = "starting"
		case "running":
		default:
			e = apiError(rpc.CodeInvalid, "VM %s is %s: wait for it to finish, or delete it", vm.Name, vm.State)
		}
	}
	f.mu.Unlock()
	switch {
	case e != nil && e.Code == rpc.CodeNotFound:
		writeErr(w, e)
	case e != nil: // bangerd refuses a busy VM in the stream
		events(w)(rpc.Event{Type: "error", Error: e.Message, Code: e.Code})
	case cp.State == "running":
		events(w)(rpc.Event{Type: "done", VM: &cp})
	default:
		f.boot(w, r, cp.Name)
	}
}

// events starts an NDJSON answer and returns what sends one event of it.
func events(w http.ResponseWriter) func(rpc.Event) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	return func(ev rpc.Event) {
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
}

// boot streams the create or start of the named VM, already creating or
// starting.
func (f *Fake) boot(w http.ResponseWriter, r *http.Request, name string) {
	send := events(w)
	send(rpc.Event{Type: "stage", Stage: "prepare"})
	send(rpc.Event{Type: "stage_done", Stage: "prepare", DurationMS: 400})
	send(rpc.Event{Type: "stage", Stage: "boot"})
	send(rpc.Event{Type: "log", Message: "kernel up"})
	f.mu.Lock()
	h := f.holds[name]
	f.mu.Unlock()
	if h != nil {
		select {
		case <-h.ch:
		case <-r.Context().Done():
			go func() {
				<-h.ch
				f.finishBoot(name)
			}()
			return
		}
	}
	vm, e := f.finishBoot(name)
	if e != nil {
		send(rpc.Event{Type: "error", Error: e.Message, Code: e.Code, VM: vm})
		return
	}
	send(rpc.Event{Type: "stage_done", Stage: "boot", DurationMS: 3100})
	send(rpc.Event{Type: "done", VM: vm})
}

// finishBoot ends the boot of the named VM and returns a copy of it.
func (f *Fake) finishBoot(name string) (*rpc.VM, *rpc.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[name]
	if !ok {
		return nil, apiError(rpc.CodeInternal, "booting %s: the VM was deleted meanwhile", name)
	}
	if msg := f.failBoot[name]; msg != "" {
		vm.State, vm.Error = "error", msg
		cp := view(vm)
		return &cp, apiError(rpc.CodeInternal, "%s", msg)
	}
	vm.State, vm.Error = "running", ""
	vm.Stages = []rpc.Stage{{Name: "prepare", DurationMS: 400}, {Name: "boot", DurationMS: 3100}}
	cp := view(vm)
	return &cp, nil
}

func (f *Fake) handleStop(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var delay time.Duration
	if e == nil {
		delay = f.stopDelay[vm.Name]
		if delay > 0 && vm.State != "stopped" {
			vm.State = "stopping"
		}
	}
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	time.Sleep(delay)
	f.withVM(func(vm *rpc.VM) any {
		vm.State = "stopped"
		return view(vm)
	})(w, r)
}

func (f *Fake) handleSuspend(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var cp rpc.VM
	if e == nil {
		switch {
		case vm.State == "suspended":
		case vm.State != "running":
			e = apiError(rpc.CodeInvalid, "VM %s is %s: only a running VM can be suspended", vm.Name, vm.State)
		case len(vm.Mounts) > 0:
			e = apiError(rpc.CodeInvalid, "VM %s has host folders, and QEMU cannot save their virtio-fs devices: stop it instead ('banger vm stop %s'); its folders come back at the next start", vm.Name, vm.Name)
		default:
			vm.State = "suspended"
		}
		cp = view(vm)
	}
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, http.StatusOK, cp)
}

func (f *Fake) handleResume(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var cp rpc.VM
	if e == nil {
		cp = view(vm)
		switch vm.State {
		case "suspended":
			vm.State = "starting"
		case "running":
		default:
			e = apiError(rpc.CodeInvalid, "VM %s is %s, not suspended: start a stopped VM with 'banger vm start %s'", vm.Name, vm.State, vm.Name)
		}
	}
	f.mu.Unlock()
	switch {
	case e != nil && e.Code == rpc.CodeNotFound:
		writeErr(w, e)
	case e != nil:
		events(w)(rpc.Event{Type: "error", Error: e.Message, Code: e.Code})
	case cp.State == "running":
		events(w)(rpc.Event{Type: "done", VM: &cp})
	default:
		f.boot(w, r, cp.Name)
	}
}

func (f *Fake) handleFork(w http.ResponseWriter, r *http.Request) {
	var req rpc.ForkRequest
	if e := decode(r, "fork", &req); e != nil {
		writeErr(w, e)
		return
	}
	f.mu.Lock()
	var cp *rpc.VM
	e := func() *rpc.Error {
		if err := vm.ValidateName(req.Name); err != nil {
			return apiError(rpc.CodeInvalid, "%v", err)
		}
		if v, ok := f.vms[req.Name]; ok {
			return apiError(rpc.CodeExists, "a VM named %s already exists (%s): pick another name, or remove it with 'banger vm delete %s'", req.Name, v.State, req.Name)
		}
		src, e := f.find(r.PathValue("name"))
		if e != nil {
			return e
		}
		if src.State != "running" {
			return apiError(rpc.CodeInvalid, "VM %s is %s: only a running VM can be forked (start it with 'banger vm start %s')", src.Name, src.State, src.Name)
		}
		if len(src.Mounts) > 0 {
			return apiError(rpc.CodeInvalid, "VM %s has host folders, and QEMU cannot snapshot their virtio-fs devices: it cannot be forked; create a VM with the same --mount flags instead", src.Name)
		}
		cp = &rpc.VM{ID: f.newID(), Name: req.Name, Image: src.Image, State: "creating", Hypervisor: hypervisor, IP: f.freeIP(), NAT: src.NAT,
			Egress: src.Egress, VCPUs: src.VCPUs, MemoryMiB: src.MemoryMiB, WorkSizeBytes: src.WorkSizeBytes, CreatedAt: time.Now()}
		f.vms[cp.Name] = cp
		return nil
	}()
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	f.boot(w, r, cp.Name)
}

func (f *Fake) handleWarmImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f.mu.Lock()
	img, ok := f.image(name)
	if ok {
		f.warm[name] = "ready"
		img.Warm = "ready"
	}
	f.mu.Unlock()
	if !ok {
		writeErr(w, apiError(rpc.CodeInvalid, "no image named %q: see 'banger image list'", name))
		return
	}
	send := events(w)
	send(rpc.Event{Type: "stage", Stage: "snapshot"})
	send(rpc.Event{Type: "stage_done", Stage: "snapshot", DurationMS: 900})
	send(rpc.Event{Type: "done", Image: &img})
}

func (f *Fake) handleSet(w http.ResponseWriter, r *http.Request) {
	var req rpc.SetRequest
	if e := decode(r, "set", &req); e != nil {
		writeErr(w, e)
		return
	}
	p, e := policy(req.Egress)
	if e != nil {
		writeErr(w, e)
		return
	}
	var size int64
	if req.WorkSize != "" {
		var e *rpc.Error
		if size, e = workSize(req.WorkSize); e != nil {
			writeErr(w, e)
			return
		}
	}
	f.change(w, r, func(vm *rpc.VM) *rpc.Error {
		if size != 0 {
			switch {
			case vm.State != "stopped" && vm.State != "error":
				return apiError(rpc.CodeInvalid, "VM %s is %s: /root grows only while the VM is stopped: stop it with 'banger vm stop %s', then run this again", vm.Name, vm.State, vm.Name)
			case size < vm.WorkSizeBytes:
				return apiError(rpc.CodeInvalid, "work size %s is smaller than the /root of %s: /root only grows", req.WorkSize, vm.Name)
			}
			vm.WorkSizeBytes = size
		}
		setPolicy(vm, p)
		if req.NAT != nil {
			vm.NAT = *req.NAT
		}
		return nil
	})
}

// change answers the VM the path names after fn changed it, or fn's
// refusal; fn runs under f.mu.
func (f *Fake) change(w http.ResponseWriter, r *http.Request, fn func(*rpc.VM) *rpc.Error) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var v rpc.VM
	if e == nil {
		if e = fn(vm); e == nil {
			v = view(vm)
		}
	}
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (f *Fake) handleAddPorts(w http.ResponseWriter, r *http.Request) {
	var req rpc.PortsRequest
	if e := decode(r, "publish", &req); e != nil {
		writeErr(w, e)
		return
	}
	sp, e := specs(req.Ports)
	if e == nil && len(sp) == 0 {
		e = apiError(rpc.CodeInvalid, "publishing ports: name at least one, as [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]")
	}
	if e != nil {
		writeErr(w, e)
		return
	}
	f.change(w, r, func(vm *rpc.VM) *rpc.Error {
		if e := f.checkPorts(vm.Name, specsOf(vm), sp); e != nil {
			return e
		}
		for _, s := range sp {
			vm.Ports = append(vm.Ports, portOf(s))
		}
		return nil
	})
}

func (f *Fake) handleRemovePorts(w http.ResponseWriter, r *http.Request) {
	var req rpc.UnpublishRequest
	if e := decode(r, "unpublish", &req); e != nil {
		writeErr(w, e)
		return
	}
	var sels []portfwd.Selector
	for _, ref := range req.Ports {
		sel := portfwd.Selector{Proto: cmp.Or(ref.Proto, portfwd.TCP)}
		if ref.HostIP != "" {
			ip, err := netip.ParseAddr(ref.HostIP)
			if err != nil {
				writeErr(w, apiError(rpc.CodeInvalid, "invalid port: host_ip %q is not an IP address", ref.HostIP))
				return
			}
			sel.HostIP = ip
		}
		if (sel.Proto != portfwd.TCP && sel.Proto != portfwd.UDP) || ref.HostPort < 1 || ref.HostPort > 65535 {
			writeErr(w, apiError(rpc.CodeInvalid, "invalid port %d/%s", ref.HostPort, ref.Proto))
			return
		}
		sel.HostPort = uint16(ref.HostPort)
		sels = append(sels, sel)
	}
	if len(sels) == 0 {
		writeErr(w, apiError(rpc.CodeInvalid, "removing published ports: name at least one, as [HOSTIP:]HOSTPORT[/tcp|/udp]"))
		return
	}
	f.change(w, r, func(vm *rpc.VM) *rpc.Error {
		have := specsOf(vm)
		for _, sel := range sels {
			if !slices.ContainsFunc(have, sel.Matches) {
				return apiError(rpc.CodeNotFound, "VM %s publishes no host port %s: see 'banger vm port list %s'", vm.Name, sel, vm.Name)
			}
		}
		var keep []rpc.Port
		for i, s := range have {
			if !slices.ContainsFunc(sels, func(sel portfwd.Selector) bool { return sel.Matches(s) }) {
				keep = append(keep, vm.Ports[i])
			}
		}
		vm.Ports = keep
		return nil
	})
}

func (f *Fake) handleOpencode(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var pw string
	if e == nil {
		if pw = f.opencode[vm.Name]; pw == "" {
			e = apiError(rpc.CodeNotFound, "VM %s has no opencode password: its image (%s) does not run banger's opencode server", vm.Name, vm.Image)
		}
	}
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, http.StatusOK, rpc.OpencodeAuth{URL: "http://" + vm.Name + ".vm:4096", User: "opencode", Password: pw})
}

// handleLogs answers the console log, or with ?tail_bytes=N its last N
// bytes from the first whole line; with ?follow it then keeps the answer
// open, as bangerd does, until the client goes away.
func (f *Fake) handleLogs(w http.ResponseWriter, r *http.Request) {
	tail, err := rpc.ParseTailBytes(r.URL.Query().Get("tail_bytes"))
	if err != nil {
		writeErr(w, apiError(rpc.CodeInvalid, "reading the console log of VM %s: bad request: %v", r.PathValue("name"), err))
		return
	}
	f.mu.Lock()
	vm, e := f.find(r.PathValue("name"))
	var text string
	if e == nil {
		var ok bool
		if text, ok = f.consoles[vm.Name]; !ok {
			text = "console of " + vm.Name + "\n"
		}
		if tail > 0 && int64(len(text)) > tail {
			cut := text[len(text)-int(tail)-1:]
			if i := strings.IndexByte(cut, '\n'); i >= 0 && i < len(cut)-1 {
				text = cut[i+1:]
			} else {
				text = cut[1:]
			}
		}
		f.consoleServed += len(text)
	}
	f.mu.Unlock()
	if e != nil {
		writeErr(w, e)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, text)
	if r.URL.Query().Get("follow") != "" {
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
}

// bundleImage returns the named image of the runtime bundle.
func bundleImage(name string) (rpc.Image, bool) {
	for _, img := range bundleImages {
		if img.Name == name {
			return img, true
		}
	}
	return rpc.Image{}, false
}

// image returns the named image, from the bundle or registered, under f.mu.
func (f *Fake) image(name string) (rpc.Image, bool) {
	if img, ok := bundleImage(name); ok {
		return img, true
	}
	img, ok := f.images[name]
	return img, ok
}

func (f *Fake) handleImages(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	var reg []rpc.Image
	for _, img := range f.images {
		reg = append(reg, img)
	}
	slices.SortFunc(reg, func(a, b rpc.Image) int { return strings.Compare(a.Name, b.Name) })
	all := append(slices.Clone(bundleImages), reg...)
	for i := range all {
		all[i].Warm = cmp.Or(f.warm[all[i].Name], "none")
	}
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, all)
}

func (f *Fake) handleRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req rpc.RegisterImageRequest
	if e := decode(r, "register", &req); e != nil {
		writeErr(w, e)
	} else if img, e := f.register(req); e != nil {
		writeErr(w, e)
	} else {
		writeJSON(w, http.StatusOK, img)
	}
}

// register records an image register request and, if bangerd would accept
// it, its image.
func (f *Fake) register(req rpc.RegisterImageRequest) (rpc.Image, *rpc.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registers = append(f.registers, req)
	if vm.ValidateName(req.Name) != nil {
		return rpc.Image{}, apiError(rpc.CodeInvalid, "invalid image name %q: use lowercase letters, digits and hyphens", req.Name)
	}
	if _, ok := bundleImage(req.Name); ok {
		return rpc.Image{}, apiError(rpc.CodeExists, "image %s comes with the runtime bundle: pick another name", req.Name)
	}
	for _, p := range []struct{ flag, path string }{{"--rootfs", req.Rootfs}, {"--work-seed", req.WorkSeed}} {
		if p.path == "" && p.flag == "--work-seed" {
			continue
		}
		if err := ext4.Check(p.path); err != nil {
			return rpc.Image{}, apiError(rpc.CodeInvalid, "%s %s: %v", p.flag, p.path, err)
		}
	}
	img := rpc.Image{Name: req.Name, Rootfs: req.Rootfs, WorkSeed: req.WorkSeed, Size: 1 << 30, Kernel: req.Kernel, Initrd: req.Initrd, Modules: req.Modules, Warm: "none"}
	switch {
	case req.Kernel == "" && req.Initrd == "" && req.Modules == "":
	case req.Kernel == "" || req.Initrd == "":
		return rpc.Image{}, apiError(rpc.CodeInvalid, "an image's own kernel needs both --kernel and --initrd")
	default:
		if err := kernel.CheckKernel(req.Kernel); err != nil {
			return rpc.Image{}, apiError(rpc.CodeInvalid, "--kernel %s: %v", req.Kernel, err)
		}
		if err := kernel.CheckInitrd(req.Initrd); err != nil {
			return rpc.Image{}, apiError(rpc.CodeInvalid, "--initrd %s: %v", req.Initrd, err)
		}
		if req.Modules != "" {
			rel, err := kernel.ModulesRelease(req.Modules)
			if err != nil {
				return rpc.Image{}, apiError(rpc.CodeInvalid, "--modules %s: %v", req.Modules, err)
			}
			img.KernelVersion = rel
		}
	}
	f.images[img.Name] = img
	return img, nil
}

func (f *Fake) handleDeleteImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f.mu.Lock()
	_, ok := f.images[name]
	delete(f.images, name)
	if ok {
		delete(f.warm, name)
	}
	f.mu.Unlock()
	_, inBundle := bundleImage(name)
	switch {
	case ok:
		writeOK(w)
	case inBundle:
		writeErr(w, apiError(rpc.CodeInvalid, "image %s comes with the runtime bundle and cannot be deleted", name))
	default:
		writeErr(w, apiError(rpc.CodeNotFound, "no registered image named %s: see 'banger image list'", name))
	}
}
