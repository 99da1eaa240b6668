package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Client speaks Firecracker's HTTP API on its unix socket. It covers the
// calls banger makes; see docs/reference/firecracker-api.md.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:       1,
		DisableCompression: true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// Socket is the API socket path the client talks to.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections to the socket.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an error answer from Firecracker.
type APIError struct {
	Method string
	Path   string
	// Status is the HTTP status code (400 for bad input).
	Status int
	// Fault is Firecracker's fault_message, or the raw body when it had none.
	Fault string
}

func (e *APIError) Error() string {
	if e.Fault == "" {
		return fmt.Sprintf("%s %s: firecracker answered %d %s", e.Method, e.Path, e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s %s: firecracker says: %s", e.Method, e.Path, e.Fault)
}

// MachineConfig is the body of PUT /machine-config.
type MachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
	// TrackDirtyPages enables diff snapshots.
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Entropy is the body of PUT /entropy (a virtio-rng device, no rate limit).
type Entropy struct{}

// Logger is the body of PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
}

// ActionType is the action_type of PUT /actions.
type ActionType string

// Actions banger uses.
const (
	InstanceStart  ActionType = "InstanceStart"
	SendCtrlAltDel ActionType = "SendCtrlAltDel"
)

// VMState is the state of PATCH /vm.
type VMState string

// States PATCH /vm accepts.
const (
	Paused  VMState = "Paused"
	Resumed VMState = "Resumed"
)

// Instance states reported by GET /.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// SnapshotCreate is the body of PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	// SnapshotType is "Full" (the default when empty) or "Diff".
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// MemBackend says where a snapshot's guest memory comes from.
type MemBackend struct {
	// BackendType is "File" or "Uffd".
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride points a restored interface at another TAP.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride points a restored vsock device at another socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoad is the body of PUT /snapshot/load.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       MemBackend        `json:"mem_backend"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
	// ClockRealtime (x86) advances the guest's kvmclock by the wall-clock
	// time since the snapshot. banger leaves it off: the agent sets the clock.
	ClockRealtime bool `json:"clock_realtime,omitempty"`
}

// PartialDrive is the body of PATCH /drives/{drive_id}.
type PartialDrive struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host,omitempty"`
}

// VMConfig is the part of GET /vm/config banger reads. After a snapshot
// load, Firecracker reports no boot source.
type VMConfig struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	MachineConfig     MachineConfig      `json:"machine-config"`
	Drives            []Drive            `json:"drives"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
}

// PutMachineConfig sets vCPUs and memory (pre-boot).
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", mc, nil)
}

// PutBootSource sets the kernel, initrd and command line (pre-boot).
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive adds or replaces the block device d.DriveID (pre-boot).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutNetworkInterface adds the network interface n.IfaceID (pre-boot).
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutVsock adds the vsock device (pre-boot).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutEntropy adds a virtio-rng device (pre-boot).
func (c *Client) PutEntropy(ctx context.Context, e Entropy) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutLogger configures Firecracker's own log.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// Action runs a synchronous action: InstanceStart (pre-boot, once) or
// SendCtrlAltDel (post-boot).
func (c *Client) Action(ctx context.Context, a ActionType) error {
	body := struct {
		ActionType ActionType `json:"action_type"`
	}{a}
	return c.do(ctx, http.MethodPut, "/actions", body, nil)
}

// PatchVM pauses or resumes a booted microVM.
func (c *Client) PatchVM(ctx context.Context, s VMState) error {
	body := struct {
		State VMState `json:"state"`
	}{s}
	return c.do(ctx, http.MethodPatch, "/vm", body, nil)
}

// PatchDrive points a booted microVM's drive at another backing file of the
// same contents (post-boot).
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.do(ctx, http.MethodPatch, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// VMConfig returns the microVM's configuration (GET /vm/config).
func (c *Client) VMConfig(ctx context.Context) (VMConfig, error) {
	var v VMConfig
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &v)
	return v, err
}

// CreateSnapshot writes the paused microVM's state and memory.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", s, nil)
}

// LoadSnapshot restores a snapshot into a fresh Firecracker process.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", s, nil)
}

// Instance returns GET /: the instance id, state and version.
func (c *Client) Instance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version returns the Firecracker version (GET /version).
func (c *Client) Version(ctx context.Context) (string, error) {
	var v struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// do sends one request. in, when not nil, is marshalled as the JSON body;
// out, when not nil, receives the JSON answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encoding body: %w", method, path, err)
		}
		body = b
	}
	return c.send(ctx, method, path, body, out)
}

// send sends one request with a raw body (none when nil).
func (c *Client) send(ctx context.Context, method, path string, in []byte, out any) error {
	var body io.Reader
	if in != nil {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &APIError{Method: method, Path: path, Status: resp.StatusCode}
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) == nil && fault.FaultMessage != "" {
			e.Fault = fault.FaultMessage
		} else {
			e.Fault = strings.TrimSpace(string(data))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
		}
	}
	return nil
}
