// Package rpc defines bangerd's API and the client that speaks it over the daemon's unix socket.
package rpc

import "time"

// VM is the API view of one VM.
type VM struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	Image         string `json:"image"`
	State         string `json:"state"`
	Hypervisor    string `json:"hypervisor"`
	VCPUs         int    `json:"vcpus"`
	MemoryMiB     int    `json:"memory_mib"`
	DiskSizeBytes int64  `json:"disk_size_bytes"`
	IP            string `json:"ip"`
	MAC           string `json:"mac"`
	TAP           string `json:"tap,omitempty"`
	PID           int    `json:"pid,omitempty"`
	NAT           bool   `json:"nat"`
	Dir           string `json:"dir"`
	// DiskFormat is the format of the VM's disk files in Dir: "qcow2"
	// (root.qcow2 and work.qcow2, copy-on-write over banger's read-only
	// bases) or "raw" (rootfs.ext4 and work.ext4).
	DiskFormat string `json:"disk_format,omitempty"`
	ConsoleLog string `json:"console_log"`
	// OpencodePassword is the basic-auth password (user "opencode") of the
	// guest's opencode server. bangerd's VM views never carry it, so lists
	// and the web UI do not show it; 'banger vm show' fills it in from
	// GET /v1/vms/{name}/opencode.
	OpencodePassword string    `json:"opencode_password,omitempty"`
	Error            string    `json:"error,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	Stages           []Stage   `json:"stages,omitempty"`
}

// OpencodeAuth is how to reach a VM's opencode server.
type OpencodeAuth struct {
	URL      string `json:"url"`
	User     string `json:"user"`
	Password string `json:"password"`
}

// Stage is the duration of one step of a create or start.
type Stage struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// CreateRequest asks for a new VM.
type CreateRequest struct {
	Name      string `json:"name"`
	Image     string `json:"image,omitempty"`
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskSize  string `json:"disk_size,omitempty"`
	NAT       bool   `json:"nat,omitempty"`
	// NoWait returns as soon as the hypervisor is up.
	NoWait bool `json:"no_wait,omitempty"`
	// Cold boots the VM even when a snapshot of its image fits.
	Cold bool `json:"cold,omitempty"`
}

// ForkRequest names the copy of POST /v1/vms/{name}/fork.
type ForkRequest struct {
	Name string `json:"name"`
}

// Event is one line of a streamed long operation (create, start).
type Event struct {
	// Type is "stage" (a stage began), "stage_done", "log", "done" or "error".
	Type       string  `json:"type"`
	Stage      string  `json:"stage,omitempty"`
	Message    string  `json:"message,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	VM         *VM     `json:"vm,omitempty"`
	Error      string  `json:"error,omitempty"`
	Code       string  `json:"code,omitempty"`
	// Image is set on the final event of an image build.
	Image *Image `json:"image,omitempty"`
}

// Result is the per-name outcome of a fan-out action (start, stop, delete, set).
type Result struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	VM    *VM    `json:"vm,omitempty"`
}

// Status describes the daemon.
type Status struct {
	Version    string    `json:"version"`
	PID        int       `json:"pid"`
	StartedAt  time.Time `json:"started_at"`
	Socket     string    `json:"socket"`
	StateDir   string    `json:"state_dir"`
	DataDir    string    `json:"data_dir"`
	RuntimeDir string    `json:"runtime_dir"`
	Hypervisor string    `json:"hypervisor"`
	Bundle     string    `json:"bundle"`
	VMs        int       `json:"vms"`
	Running    int       `json:"running"`
}

// SSHInfo is what the CLI needs to run the system ssh against a VM.
type SSHInfo struct {
	Name       string `json:"name"`
	IP         string `json:"ip"`
	User       string `json:"user"`
	KeyPath    string `json:"key_path"`
	KnownHosts string `json:"known_hosts"`
	HostAlias  string `json:"host_alias"`
	State      string `json:"state"`
}

// Image is the API view of an image.
type Image struct {
	Name     string `json:"name"`
	Rootfs   string `json:"rootfs"`
	WorkSeed string `json:"work_seed"`
	Default  bool   `json:"default"`
	Managed  bool   `json:"managed"`
	Size     int64  `json:"size_bytes"`
	// Warm says whether creates with the default sizes restore a snapshot
	// of the image: "ready", "building", "stale" (WarmReason says why it no
	// longer fits) or "none".
	Warm       string     `json:"warm"`
	WarmReason string     `json:"warm_reason,omitempty"`
	WarmSince  *time.Time `json:"warm_since,omitempty"`
}

// RegisterImageRequest records an existing ext4 image under a name.
type RegisterImageRequest struct {
	Name     string `json:"name"`
	Rootfs   string `json:"rootfs"`
	WorkSeed string `json:"work_seed,omitempty"`
}

// BuildImageRequest asks bangerd to build a Debian image with debootstrap.
type BuildImageRequest struct {
	Name string `json:"name"`
	// Kind is "docker" (systemd, sshd, docker, tmux, git, curl) or "minimal".
	Kind string `json:"kind,omitempty"`
	// Size is the image's filesystem size, e.g. "4G".
	Size string `json:"size,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"error"`
	// Code is machine-readable: invalid, not_found, exists, unavailable, internal.
	Code string `json:"code"`
}

// Error codes.
const (
	CodeInvalid     = "invalid"
	CodeNotFound    = "not_found"
	CodeExists      = "exists"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)
