// Package fctest is a fake Firecracker (API server, hybrid vsock and guest agent) for tests, strict about the API's rules.
package fctest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Version is the Firecracker version the fake claims to be.
const Version = "1.16.1"

// AgentPort is the guest vsock port the fake agent answers on (the same as
// agent.Port; repeated so that the fake imports nothing of banger).
const AgentPort = 1024

// Instance states, as GET / reports them.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// Call is one API request the server received.
type Call struct {
	Method string
	Path   string
	// Body is the raw request body.
	Body string
	// Status is the HTTP status the server answered.
	Status int
	// Fault is the fault_message of an error answer.
	Fault string
}

// String is "METHOD /path".
func (c Call) String() string { return c.Method + " " + c.Path }

// Server is a fake Firecracker API. Configure the exported fields before
// Listen. It is safe for concurrent use.
type Server struct {
	// Console receives what the fake guest "prints" (Firecracker's serial
	// console is its stdout). Nil discards it.
	Console io.Writer
	// Journal, when set, receives every call as one JSON object per line,
	// so that a test can read the calls of a fake running as a process.
	Journal io.Writer
	// RebootDelay is how long the fake guest takes to reboot (and so end the
	// VMM) after Ctrl-Alt-Del or an agent shutdown. Zero means 20ms.
	RebootDelay time.Duration

	id string

	mu    sync.Mutex
	state string
	// The fake guest's identity and boot time; a snapshot carries them.
	hostname string
	hostKey  string
	booted   time.Time
	calls    []Call
	machine  *machineConfig
	boot     *bootSource
	drives   map[string]drive
	// driveOrder and ifaceOrder keep the order devices were added in.
	driveOrder []string
	ifaces     map[string]netIface
	ifaceOrder []string
	vsock      *vsockConfig
	vsockLn    net.Listener
	entropy    bool
	logPath    string
	conns      map[net.Conn]struct{}
	nextPort   int
	httpSrv    *http.Server
	apiLn      net.Listener
	closed     bool

	off       chan struct{}
	offOnce   sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NewServer returns a server for the instance id (Firecracker's --id).
func NewServer(id string) *Server {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("generating fake host key: %v", err))
	}
	return &Server{
		id:       id,
		hostname: id,
		hostKey:  sshEd25519(pub),
		state:    StateNotStarted,
		drives:   map[string]drive{},
		ifaces:   map[string]netIface{},
		conns:    map[net.Conn]struct{}{},
		nextPort: 1 << 30,
		off:      make(chan struct{}),
	}
}

// Listen serves the API on a new unix socket at path (mode 0600), in the
// background, until Close. Like Firecracker, it fails when path exists.
func (s *Server) Listen(path string) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("restricting api socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.apiLn, s.httpSrv = ln, srv
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv.Serve(ln)
	}()
	return nil
}

// Close stops serving and removes the sockets the server made. Every call
// returns once the server has stopped.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		srv, vln := s.httpSrv, s.vsockLn
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		if srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			srv.Shutdown(ctx)
			cancel()
		}
		if vln != nil {
			vln.Close()
		}
		s.wg.Wait()
	})
	return nil
}

// PoweredOff is closed when the fake guest has rebooted (Ctrl-Alt-Del or an
// agent shutdown). Like a real Firecracker process, the server then stops
// serving.
func (s *Server) PoweredOff() <-chan struct{} { return s.off }

// State is the instance state as GET / reports it.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// HostKey is the SSH host key ("ssh-ed25519 AAAA...") the fake agent
// reports. A snapshot load replaces it with the snapshotted guest's.
func (s *Server) HostKey() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostKey
}

// Calls returns every request received so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// Succeeded lists the requests that succeeded, as "METHOD /path", in order.
func (s *Server) Succeeded() []string { return Succeeded(s.Calls()) }

// apiError is a 400 answer.
type apiError struct{ msg string }

func (e apiError) Error() string { return e.msg }

func bad(format string, args ...any) error { return apiError{fmt.Sprintf(format, args...)} }

// ServeHTTP implements the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	call := Call{Method: r.Method, Path: r.URL.Path, Body: string(body)}
	var out any
	if err != nil {
		err = bad("reading request body: %v", err)
	} else {
		s.mu.Lock()
		out, err = s.route(r.Method, r.URL.Path, body)
		s.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case err != nil:
		call.Status = http.StatusBadRequest
		var ae apiError
		if !errors.As(err, &ae) {
			call.Status = http.StatusInternalServerError
		}
		call.Fault = err.Error()
		w.WriteHeader(call.Status)
		json.NewEncoder(w).Encode(map[string]string{"fault_message": call.Fault})
	case out != nil:
		call.Status = http.StatusOK
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(out)
	default:
		call.Status = http.StatusNoContent
		w.WriteHeader(http.StatusNoContent)
	}
	s.mu.Lock()
	s.calls = append(s.calls, call)
	if s.Journal != nil {
		json.NewEncoder(s.Journal).Encode(call)
	}
	s.mu.Unlock()
}

// route handles one request with s.mu held. A nil answer and nil error is
// 204 No Content.
func (s *Server) route(method, path string, body []byte) (any, error) {
	started := s.state != StateNotStarted
	preBoot := func(fn func() error) (any, error) {
		if started {
			return nil, bad("%s %s is only allowed before the microVM starts, and it has started", method, path)
		}
		return nil, fn()
	}
	switch {
	case method == http.MethodGet && path == "/":
		return map[string]string{"id": s.id, "state": s.state, "vmm_version": Version, "app_name": "Firecracker"}, nil
	case method == http.MethodGet && path == "/version":
		return map[string]string{"firecracker_version": Version}, nil
	case method == http.MethodGet && path == "/machine-config":
		return s.machineOrDefault(), nil
	case method == http.MethodGet && path == "/vm/config":
		return s.vmConfig(), nil
	case method == http.MethodPut && path == "/machine-config":
		return preBoot(func() error { return s.putMachineConfig(body) })
	case method == http.MethodPut && path == "/boot-source":
		return preBoot(func() error { return s.putBootSource(body) })
	case method == http.MethodPut && strings.HasPrefix(path, "/drives/"):
		return preBoot(func() error { return s.putDrive(strings.TrimPrefix(path, "/drives/"), body) })
	case method == http.MethodPatch && strings.HasPrefix(path, "/drives/"):
		return nil, s.patchDrive(strings.TrimPrefix(path, "/drives/"), body)
	case method == http.MethodPut && strings.HasPrefix(path, "/network-interfaces/"):
		return preBoot(func() error { return s.putNetIface(strings.TrimPrefix(path, "/network-interfaces/"), body) })
	case method == http.MethodPut && path == "/vsock":
		return preBoot(func() error { return s.putVsock(body) })
	case method == http.MethodPut && path == "/entropy":
		return preBoot(func() error { return s.putEntropy(body) })
	case method == http.MethodPut && path == "/logger":
		return nil, s.putLogger(body)
	case method == http.MethodPut && path == "/actions":
		return nil, s.putAction(body)
	case method == http.MethodPatch && path == "/vm":
		return nil, s.patchVM(body)
	case method == http.MethodPut && path == "/snapshot/create":
		return nil, s.createSnapshot(body)
	case method == http.MethodPut && path == "/snapshot/load":
		return preBoot(func() error { return s.loadSnapshot(body) })
	}
	return nil, bad("invalid request method and/or path: %s %s", method, path)
}

// decode reads a JSON body strictly: it must be present, one object, and
// have no fields the API does not define.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return bad("the request has no body; this call needs a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bad("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("invalid JSON body: data after the object")
	}
	return nil
}

type tokenBucket struct {
	Size         *int64 `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   *int64 `json:"refill_time"`
}

type rateLimiter struct {
	Bandwidth *tokenBucket `json:"bandwidth,omitempty"`
	Ops       *tokenBucket `json:"ops,omitempty"`
}

func (rl *rateLimiter) check(field string) error {
	if rl == nil {
		return nil
	}
	for name, tb := range map[string]*tokenBucket{"bandwidth": rl.Bandwidth, "ops": rl.Ops} {
		if tb == nil {
			continue
		}
		if tb.Size == nil || tb.RefillTime == nil {
			return bad("%s.%s needs size and refill_time", field, name)
		}
		if *tb.Size < 0 || *tb.RefillTime < 0 || (tb.OneTimeBurst != nil && *tb.OneTimeBurst < 0) {
			return bad("%s.%s: values must not be negative", field, name)
		}
	}
	return nil
}

type machineConfig struct {
	VCPUCount       *int    `json:"vcpu_count"`
	MemSizeMiB      *int    `json:"mem_size_mib"`
	SMT             *bool   `json:"smt,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

func (s *Server) putMachineConfig(body []byte) error {
	var mc machineConfig
	if err := decode(body, &mc); err != nil {
		return err
	}
	if mc.VCPUCount == nil || mc.MemSizeMiB == nil {
		return bad("machine-config needs vcpu_count and mem_size_mib")
	}
	n := *mc.VCPUCount
	if n < 1 || n > 32 {
		return bad("vcpu_count %d is out of range: it must be 1 to 32", n)
	}
	if mc.SMT != nil && *mc.SMT && n > 1 && n%2 == 1 {
		return bad("vcpu_count %d is odd: with smt it must be 1 or even", n)
	}
	if *mc.MemSizeMiB <= 0 {
		return bad("mem_size_mib %d must be positive", *mc.MemSizeMiB)
	}
	if t := mc.CPUTemplate; t != nil && !oneOf(*t, "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None") {
		return bad("unknown cpu_template %q", *t)
	}
	if h := mc.HugePages; h != nil {
		if !oneOf(*h, "None", "2M") {
			return bad("unknown huge_pages %q", *h)
		}
		if *h == "2M" && *mc.MemSizeMiB%2 != 0 {
			return bad("mem_size_mib %d must be a multiple of 2 with 2M huge pages", *mc.MemSizeMiB)
		}
	}
	s.machine = &mc
	return nil
}

type bootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args,omitempty"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
}

func (s *Server) putBootSource(body []byte) error {
	var bs bootSource
	if err := decode(body, &bs); err != nil {
		return err
	}
	if bs.KernelImagePath == nil || *bs.KernelImagePath == "" {
		return bad("boot-source needs kernel_image_path")
	}
	if err := regularFile("kernel_image_path", *bs.KernelImagePath); err != nil {
		return err
	}
	if bs.InitrdPath != nil {
		if err := regularFile("initrd_path", *bs.InitrdPath); err != nil {
			return err
		}
	}
	s.boot = &bs
	return nil
}

type drive struct {
	DriveID      *string      `json:"drive_id"`
	PathOnHost   *string      `json:"path_on_host,omitempty"`
	IsRootDevice *bool        `json:"is_root_device"`
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PartUUID     *string      `json:"partuuid,omitempty"`
	CacheType    *string      `json:"cache_type,omitempty"`
	IOEngine     *string      `json:"io_engine,omitempty"`
	RateLimiter  *rateLimiter `json:"rate_limiter,omitempty"`
	Socket       *string      `json:"socket,omitempty"`
}

func (s *Server) putDrive(id string, body []byte) error {
	if id == "" {
		return bad("the drive id in the path is empty")
	}
	var d drive
	if err := decode(body, &d); err != nil {
		return err
	}
	if d.DriveID == nil || d.IsRootDevice == nil {
		return bad("a drive needs drive_id and is_root_device")
	}
	if *d.DriveID != id {
		return bad("drive_id %q in the body differs from %q in the path", *d.DriveID, id)
	}
	if d.Socket != nil {
		return bad("drive %s: vhost-user-block (socket) is not supported by this fake", id)
	}
	if d.PathOnHost == nil || d.IsReadOnly == nil {
		return bad("virtio-block drive %s needs path_on_host and is_read_only", id)
	}
	if err := regularFile("path_on_host", *d.PathOnHost); err != nil {
		return err
	}
	if c := d.CacheType; c != nil && !oneOf(*c, "Unsafe", "Writeback") {
		return bad("unknown cache_type %q", *c)
	}
	if e := d.IOEngine; e != nil && !oneOf(*e, "Sync", "Async") {
		return bad("unknown io_engine %q", *e)
	}
	if err := d.RateLimiter.check("rate_limiter"); err != nil {
		return err
	}
	if *d.IsRootDevice {
		for other, od := range s.drives {
			if other != id && *od.IsRootDevice {
				return bad("drive %s cannot be a root device: drive %s already is", id, other)
			}
		}
	}
	if _, ok := s.drives[id]; !ok {
		s.driveOrder = append(s.driveOrder, id)
	}
	s.drives[id] = d
	return nil
}

// patchDrive is PATCH /drives/{id}: after boot, point a drive at another
// backing file (Firecracker reopens it and tells the guest).
func (s *Server) patchDrive(id string, body []byte) error {
	var d struct {
		DriveID     *string      `json:"drive_id"`
		PathOnHost  *string      `json:"path_on_host,omitempty"`
		RateLimiter *rateLimiter `json:"rate_limiter,omitempty"`
	}
	if err := decode(body, &d); err != nil {
		return err
	}
	if s.state == StateNotStarted {
		return bad("PATCH /drives/%s is only allowed after the microVM starts (use PUT before)", id)
	}
	if d.DriveID == nil {
		return bad("a drive update needs drive_id")
	}
	if *d.DriveID != id {
		return bad("drive_id %q in the body differs from %q in the path", *d.DriveID, id)
	}
	cur, ok := s.drives[id]
	if !ok {
		return bad("drive %s does not exist", id)
	}
	if err := d.RateLimiter.check("rate_limiter"); err != nil {
		return err
	}
	if d.PathOnHost != nil {
		if err := regularFile("path_on_host", *d.PathOnHost); err != nil {
			return err
		}
		p := *d.PathOnHost
		cur.PathOnHost = &p
	}
	s.drives[id] = cur
	return nil
}

func (s *Server) machineOrDefault() any {
	if s.machine == nil {
		return map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "smt": false}
	}
	return s.machine
}

// vmConfig is GET /vm/config: every device in the order it was added. A
// restored microVM has no boot source, as in Firecracker.
func (s *Server) vmConfig() map[string]any {
	out := map[string]any{
		"machine-config":     s.machineOrDefault(),
		"drives":             s.orderedDrives(),
		"network-interfaces": s.orderedIfaces(),
	}
	if s.boot != nil {
		out["boot-source"] = s.boot
	}
	if s.vsock != nil {
		out["vsock"] = s.vsock
	}
	if s.entropy {
		out["entropy"] = map[string]any{}
	}
	return out
}

func (s *Server) orderedDrives() []drive {
	out := []drive{}
	for _, id := range s.driveOrder {
		out = append(out, s.drives[id])
	}
	return out
}

func (s *Server) orderedIfaces() []netIface {
	out := []netIface{}
	for _, id := range s.ifaceOrder {
		out = append(out, s.ifaces[id])
	}
	return out
}

var macRE = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)

type netIface struct {
	IfaceID       *string      `json:"iface_id"`
	HostDevName   *string      `json:"host_dev_name"`
	GuestMAC      *string      `json:"guest_mac,omitempty"`
	MTU           *int         `json:"mtu,omitempty"`
	RxRateLimiter *rateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *rateLimiter `json:"tx_rate_limiter,omitempty"`
}

func (s *Server) putNetIface(id string, body []byte) error {
	if id == "" {
		return bad("the interface id in the path is empty")
	}
	var n netIface
	if err := decode(body, &n); err != nil {
		return err
	}
	if n.IfaceID == nil || n.HostDevName == nil || *n.HostDevName == "" {
		return bad("a network interface needs iface_id and host_dev_name")
	}
	if *n.IfaceID != id {
		return bad("iface_id %q in the body differs from %q in the path", *n.IfaceID, id)
	}
	if len(*n.HostDevName) > 15 {
		return bad("host_dev_name %q is longer than 15 bytes", *n.HostDevName)
	}
	if n.GuestMAC != nil && !macRE.MatchString(*n.GuestMAC) {
		return bad("guest_mac %q is not a MAC address", *n.GuestMAC)
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		return bad("mtu %d is out of range 68 to 65535", *n.MTU)
	}
	if err := n.RxRateLimiter.check("rx_rate_limiter"); err != nil {
		return err
	}
	if err := n.TxRateLimiter.check("tx_rate_limiter"); err != nil {
		return err
	}
	for other, on := range s.ifaces {
		if other == id {
			continue
		}
		if *on.HostDevName == *n.HostDevName {
			return bad("host_dev_name %s is already used by interface %s", *n.HostDevName, other)
		}
		if on.GuestMAC != nil && n.GuestMAC != nil && strings.EqualFold(*on.GuestMAC, *n.GuestMAC) {
			return bad("guest_mac %s is already used by interface %s", *n.GuestMAC, other)
		}
	}
	if _, ok := s.ifaces[id]; !ok {
		s.ifaceOrder = append(s.ifaceOrder, id)
	}
	s.ifaces[id] = n
	return nil
}

type vsockConfig struct {
	GuestCID *int64  `json:"guest_cid"`
	UDSPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"`
}

func (s *Server) putVsock(body []byte) error {
	var v vsockConfig
	if err := decode(body, &v); err != nil {
		return err
	}
	if v.GuestCID == nil || v.UDSPath == nil || *v.UDSPath == "" {
		return bad("vsock needs guest_cid and uds_path")
	}
	if *v.GuestCID < 3 || *v.GuestCID > 0xFFFFFFFF {
		return bad("guest_cid %d is invalid: it must be 3 or more", *v.GuestCID)
	}
	if err := s.bindVsock(*v.UDSPath); err != nil {
		return err
	}
	s.vsock = &v
	return nil
}

// bindVsock replaces the hybrid vsock listener, as Firecracker binds uds_path
// when the device is created.
func (s *Server) bindVsock(path string) error {
	if s.vsockLn != nil {
		s.vsockLn.Close()
		s.vsockLn = nil
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return bad("binding vsock socket %s: %v", path, err)
	}
	s.vsockLn = ln
	s.wg.Add(1)
	go s.serveVsock(ln)
	return nil
}

type entropyDevice struct {
	RateLimiter *rateLimiter `json:"rate_limiter,omitempty"`
}

func (s *Server) putEntropy(body []byte) error {
	var e entropyDevice
	if err := decode(body, &e); err != nil {
		return err
	}
	if err := e.RateLimiter.check("rate_limiter"); err != nil {
		return err
	}
	s.entropy = true
	return nil
}

type logger struct {
	LogPath       *string `json:"log_path,omitempty"`
	Level         *string `json:"level,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

func (s *Server) putLogger(body []byte) error {
	var l logger
	if err := decode(body, &l); err != nil {
		return err
	}
	if l.Level != nil && !oneOf(strings.ToLower(*l.Level), "error", "warning", "info", "debug", "trace", "off") {
		return bad("unknown log level %q", *l.Level)
	}
	if l.LogPath != nil {
		// Firecracker opens the log without creating it.
		f, err := os.OpenFile(*l.LogPath, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return bad("opening log_path: %v", err)
		}
		fmt.Fprintf(f, "fctest: logger configured for instance %s\n", s.id)
		f.Close()
		s.logPath = *l.LogPath
	}
	return nil
}

func (s *Server) putAction(body []byte) error {
	var a struct {
		ActionType *string `json:"action_type"`
	}
	if err := decode(body, &a); err != nil {
		return err
	}
	if a.ActionType == nil {
		return bad("actions needs action_type")
	}
	switch *a.ActionType {
	case "InstanceStart":
		if s.state != StateNotStarted {
			return bad("InstanceStart: the microVM has already started")
		}
		if s.boot == nil {
			return bad("InstanceStart: no boot source is configured (PUT /boot-source first)")
		}
		if s.machine == nil {
			// Firecracker would default to 1 vCPU and 128 MiB; banger always
			// sets them, so the fake insists.
			return bad("InstanceStart: no machine configuration (PUT /machine-config first)")
		}
		s.state = StateRunning
		s.booted = time.Now()
		s.printf("fctest: booting %s with %q\n", *s.boot.KernelImagePath, deref(s.boot.BootArgs))
		return nil
	case "SendCtrlAltDel":
		if s.state != StateRunning {
			return bad("SendCtrlAltDel: the microVM is %s, not running", strings.ToLower(s.state))
		}
		s.printf("fctest: Ctrl-Alt-Del, rebooting\n")
		s.powerOff()
		return nil
	case "FlushMetrics":
		return bad("FlushMetrics: metrics are not configured")
	}
	return bad("unknown action_type %q", *a.ActionType)
}

func (s *Server) patchVM(body []byte) error {
	var v struct {
		State *string `json:"state"`
	}
	if err := decode(body, &v); err != nil {
		return err
	}
	if v.State == nil {
		return bad("vm needs state")
	}
	if s.state == StateNotStarted {
		return bad("PATCH /vm: the microVM has not started")
	}
	switch *v.State {
	case "Paused":
		s.state = StatePaused
	case "Resumed":
		s.state = StateRunning
	default:
		return bad("unknown vm state %q: want Paused or Resumed", *v.State)
	}
	return nil
}

// snapshotFile is the fake's microVM state file: the configuration of the
// snapshotted machine and its fake guest's identity. Its memory file holds
// memoryMagic and the same token, so that a load can tell they belong
// together.
type snapshotFile struct {
	Fake    string         `json:"fctest_snapshot"`
	Token   string         `json:"memory_token"`
	Machine *machineConfig `json:"machine"`
	Drives  []drive        `json:"drives"`
	Ifaces  []netIface     `json:"network_interfaces"`
	Vsock   *vsockConfig   `json:"vsock,omitempty"`
	Entropy bool           `json:"entropy"`
	Guest   guestState     `json:"guest"`
}

// guestState is what the fake guest "remembers" across a snapshot.
type guestState struct {
	Hostname string `json:"hostname"`
	HostKey  string `json:"host_key"`
	UptimeMS int64  `json:"uptime_ms"`
}

// memoryMagic starts the fake's memory files.
const memoryMagic = "fctest memory "

// maxSnapshotFile bounds what a load reads of a state or memory file.
const maxSnapshotFile = 1 << 20

func (s *Server) createSnapshot(body []byte) error {
	var c struct {
		MemFilePath  *string `json:"mem_file_path"`
		SnapshotPath *string `json:"snapshot_path"`
		SnapshotType *string `json:"snapshot_type,omitempty"`
	}
	if err := decode(body, &c); err != nil {
		return err
	}
	if c.MemFilePath == nil || c.SnapshotPath == nil || *c.MemFilePath == "" || *c.SnapshotPath == "" {
		return bad("snapshot/create needs mem_file_path and snapshot_path")
	}
	if s.state != StatePaused {
		return bad("snapshot/create: the microVM must be paused (PATCH /vm Paused first), it is %s", strings.ToLower(s.state))
	}
	if t := c.SnapshotType; t != nil {
		if !oneOf(*t, "Full", "Diff") {
			return bad("unknown snapshot_type %q", *t)
		}
		if *t == "Diff" && (s.machine.TrackDirtyPages == nil || !*s.machine.TrackDirtyPages) {
			return bad("diff snapshots need track_dirty_pages in machine-config")
		}
	}
	token := make([]byte, 16)
	rand.Read(token)
	snap := snapshotFile{
		Fake:    Version,
		Token:   hex.EncodeToString(token),
		Machine: s.machine,
		Drives:  s.orderedDrives(),
		Ifaces:  s.orderedIfaces(),
		Vsock:   s.vsock,
		Entropy: s.entropy,
		Guest:   guestState{Hostname: s.hostname, HostKey: s.hostKey, UptimeMS: time.Since(s.booted).Milliseconds()},
	}
	data, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encoding snapshot: %w", err)
	}
	// Like Firecracker, create the files or truncate them.
	if err := os.WriteFile(*c.SnapshotPath, data, 0o600); err != nil {
		return bad("writing snapshot: %v", err)
	}
	if err := os.WriteFile(*c.MemFilePath, []byte(memoryMagic+snap.Token+"\n"), 0o600); err != nil {
		return bad("writing memory file: %v", err)
	}
	s.printf("fctest: snapshot written to %s\n", *c.SnapshotPath)
	return nil
}

// snapshotLoad is the body of PUT /snapshot/load.
type snapshotLoad struct {
	SnapshotPath        *string `json:"snapshot_path"`
	EnableDiffSnapshots *bool   `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     *bool   `json:"track_dirty_pages,omitempty"`
	MemFilePath         *string `json:"mem_file_path,omitempty"`
	MemBackend          *struct {
		BackendType *string `json:"backend_type"`
		BackendPath *string `json:"backend_path"`
	} `json:"mem_backend,omitempty"`
	ResumeVM         *bool `json:"resume_vm,omitempty"`
	NetworkOverrides []struct {
		IfaceID     *string `json:"iface_id"`
		HostDevName *string `json:"host_dev_name"`
	} `json:"network_overrides,omitempty"`
	VsockOverride *struct {
		UDSPath *string `json:"uds_path"`
	} `json:"vsock_override,omitempty"`
	ClockRealtime *bool `json:"clock_realtime,omitempty"`
}

// fresh reports whether nothing but the logger (and metrics) has been
// configured: only then is a snapshot load allowed.
func (s *Server) fresh() bool {
	return s.machine == nil && s.boot == nil && len(s.drives) == 0 && len(s.ifaces) == 0 && s.vsock == nil && !s.entropy
}

// loadSnapshot checks the request as Firecracker's API server does (a
// refusal leaves the process as it was), then loads. Like Firecracker, a
// load that fails after that ends the process, which may be half-restored.
func (s *Server) loadSnapshot(body []byte) error {
	var l snapshotLoad
	if err := decode(body, &l); err != nil {
		return err
	}
	if !s.fresh() {
		return bad("snapshot/load is only allowed on a fresh process, before anything but the logger and metrics is configured")
	}
	if l.SnapshotPath == nil || *l.SnapshotPath == "" {
		return bad("snapshot/load needs snapshot_path")
	}
	if (l.MemFilePath == nil) == (l.MemBackend == nil) {
		return bad("snapshot/load needs exactly one of mem_backend and mem_file_path")
	}
	memPath := deref(l.MemFilePath)
	if mb := l.MemBackend; mb != nil {
		if mb.BackendType == nil || mb.BackendPath == nil {
			return bad("mem_backend needs backend_type and backend_path")
		}
		if !oneOf(*mb.BackendType, "File", "Uffd") {
			return bad("unknown backend_type %q", *mb.BackendType)
		}
		if *mb.BackendType == "Uffd" {
			return bad("the Uffd memory backend is not supported by this fake")
		}
		memPath = *mb.BackendPath
	}
	seen := map[string]bool{}
	for _, o := range l.NetworkOverrides {
		if o.IfaceID == nil || o.HostDevName == nil || *o.HostDevName == "" {
			return bad("network_overrides entries need iface_id and host_dev_name")
		}
		if seen[*o.IfaceID] {
			return bad("network_overrides names interface %s twice", *o.IfaceID)
		}
		seen[*o.IfaceID] = true
		if len(*o.HostDevName) > 15 {
			return bad("network_overrides: host_dev_name %q is longer than 15 bytes", *o.HostDevName)
		}
	}
	if o := l.VsockOverride; o != nil && (o.UDSPath == nil || *o.UDSPath == "") {
		return bad("vsock_override needs uds_path")
	}
	if err := s.restore(l, memPath); err != nil {
		s.printf("fctest: loading snapshot %s failed: %v; exiting\n", *l.SnapshotPath, err)
		s.powerOff()
		return err
	}
	return nil
}

// restore loads the snapshot l names, with s.mu held.
func (s *Server) restore(l snapshotLoad, memPath string) error {
	if err := regularFile("memory file", memPath); err != nil {
		return err
	}
	mem, err := readBounded(memPath)
	if err != nil {
		return bad("reading memory file: %v", err)
	}
	token, ok := strings.CutPrefix(string(mem), memoryMagic)
	if !ok {
		return bad("memory file %s is not a memory file made by this fake", memPath)
	}
	data, err := readBounded(*l.SnapshotPath)
	if err != nil {
		return bad("reading snapshot: %v", err)
	}
	var snap snapshotFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&snap); err != nil || snap.Fake == "" || snap.Machine == nil {
		return bad("%s is not a snapshot made by this fake", *l.SnapshotPath)
	}
	if snap.Fake != Version {
		return bad("snapshot %s was made by version %s, this is %s", *l.SnapshotPath, snap.Fake, Version)
	}
	for _, d := range snap.Drives {
		if d.DriveID == nil || d.PathOnHost == nil {
			return bad("%s is not a snapshot made by this fake (a drive has no id or path)", *l.SnapshotPath)
		}
	}
	for _, n := range snap.Ifaces {
		if n.IfaceID == nil || n.HostDevName == nil {
			return bad("%s is not a snapshot made by this fake (an interface has no id or tap)", *l.SnapshotPath)
		}
	}
	if v := snap.Vsock; v != nil && (v.UDSPath == nil || v.GuestCID == nil) {
		return bad("%s is not a snapshot made by this fake (the vsock has no path or cid)", *l.SnapshotPath)
	}
	if strings.TrimSuffix(token, "\n") != snap.Token {
		return bad("memory file %s does not belong to snapshot %s", memPath, *l.SnapshotPath)
	}
	// Firecracker reopens every drive at the path it had.
	for _, d := range snap.Drives {
		if err := regularFile(fmt.Sprintf("drive %s: path_on_host", deref(d.DriveID)), deref(d.PathOnHost)); err != nil {
			return err
		}
	}
	ifaces := map[string]netIface{}
	var order []string
	for _, n := range snap.Ifaces {
		ifaces[*n.IfaceID] = n
		order = append(order, *n.IfaceID)
	}
	for _, o := range l.NetworkOverrides {
		n, ok := ifaces[*o.IfaceID]
		if !ok {
			return bad("network_overrides: the snapshot has no network interface %q", *o.IfaceID)
		}
		tap := *o.HostDevName
		n.HostDevName = &tap
		ifaces[*o.IfaceID] = n
	}
	taps := map[string]string{}
	for _, id := range order {
		tap := *ifaces[id].HostDevName
		if other, dup := taps[tap]; dup {
			return bad("host_dev_name %s would back both interface %s and %s", tap, other, id)
		}
		taps[tap] = id
	}
	vsock := snap.Vsock
	if o := l.VsockOverride; o != nil {
		if vsock == nil {
			return bad("vsock_override: the snapshot has no vsock device")
		}
		v := *vsock
		v.UDSPath = o.UDSPath
		vsock = &v
	}
	if vsock != nil {
		if err := s.bindVsock(*vsock.UDSPath); err != nil {
			return err
		}
	}
	machine := *snap.Machine
	// As GET /vm/config says, a restored microVM reports no smt or cpu_template.
	machine.SMT, machine.CPUTemplate = nil, nil
	s.machine, s.boot, s.vsock, s.entropy = &machine, nil, vsock, snap.Entropy
	for _, d := range snap.Drives {
		s.drives[*d.DriveID] = d
		s.driveOrder = append(s.driveOrder, *d.DriveID)
	}
	s.ifaces, s.ifaceOrder = ifaces, order
	s.hostname, s.hostKey = snap.Guest.Hostname, snap.Guest.HostKey
	s.booted = time.Now().Add(-time.Duration(snap.Guest.UptimeMS) * time.Millisecond)
	s.state = StatePaused
	if l.ResumeVM != nil && *l.ResumeVM {
		s.state = StateRunning
	}
	s.printf("fctest: restored %s from %s (%s)\n", s.hostname, *l.SnapshotPath, strings.ToLower(s.state))
	return nil
}

// readBounded reads at most maxSnapshotFile bytes of path.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxSnapshotFile))
}

// powerOff ends the fake guest after RebootDelay: the VMM stops serving.
// Called with s.mu held.
func (s *Server) powerOff() {
	d := s.RebootDelay
	if d == 0 {
		d = 20 * time.Millisecond
	}
	time.AfterFunc(d, func() {
		s.Close()
		s.offOnce.Do(func() { close(s.off) })
	})
}

// serveVsock accepts host-initiated hybrid vsock connections.
func (s *Server) serveVsock(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handleVsock(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// handleVsock does the CONNECT handshake and then plays the guest agent.
// Like Firecracker, it closes the connection when no guest listens on the
// port: before boot, while paused, or on a port other than AgentPort.
func (s *Server) handleVsock(c net.Conn) {
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	portStr, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	port, err := strconv.ParseUint(portStr, 10, 32)
	if !ok || err != nil {
		return
	}
	s.mu.Lock()
	running := s.state == StateRunning
	hostPort := s.nextPort
	s.nextPort++
	s.mu.Unlock()
	if !running || port != AgentPort {
		return
	}
	if _, err := fmt.Fprintf(c, "OK %d\n", hostPort); err != nil {
		return
	}
	enc := json.NewEncoder(c)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		var req struct {
			Op string `json:"op"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			enc.Encode(map[string]any{"ok": false, "error": fmt.Sprintf("decoding request: %v", err)})
			continue
		}
		switch req.Op {
		case "health":
			s.mu.Lock()
			up := time.Since(s.booted).Milliseconds()
			name, key := s.hostname, s.hostKey
			s.mu.Unlock()
			enc.Encode(map[string]any{"ok": true, "hostname": name, "uptime_ms": up, "ssh_host_keys": []string{key}})
		case "shutdown":
			enc.Encode(map[string]any{"ok": true})
			s.mu.Lock()
			s.printf("fctest: agent shutdown, rebooting\n")
			s.powerOff()
			s.mu.Unlock()
			return
		default:
			enc.Encode(map[string]any{"ok": false, "error": fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
}

func (s *Server) printf(format string, args ...any) {
	if s.Console != nil {
		fmt.Fprintf(s.Console, format, args...)
	}
}

func regularFile(field, path string) error {
	if path == "" {
		return bad("%s is empty", field)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return bad("%s: %v", field, err)
	}
	if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
		return bad("%s: %s is not a file or block device", field, path)
	}
	return nil
}

func oneOf(v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// sshEd25519 formats pub as an authorized_keys line.
func sshEd25519(pub ed25519.PublicKey) string {
	var b []byte
	for _, part := range [][]byte{[]byte("ssh-ed25519"), pub} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(part)))
		b = append(b, part...)
	}
	return "ssh-ed25519 " + base64.StdEncoding.EncodeToString(b)
}
