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
	// WorkSizeBytes is the size of the VM's /root disk (sparse on the host).
	WorkSizeBytes int64  `json:"work_size_bytes"`
	IP            string `json:"ip"`
	MAC           string `json:"mac"`
	TAP           string `json:"tap,omitempty"`
	PID           int    `json:"pid,omitempty"`
	NAT           bool   `json:"nat"`
	// Egress is the VM's egress policy in one line ("default", "allow
	// github.com,*.npmjs.org", "deny evil.example", "open"); it applies
	// while NAT is on.
	Egress string `json:"egress"`
	// EgressStats is what the policy refused; only GET /v1/vms/{name}
	// fills it, for a running NAT VM with a policy in force.
	EgressStats *EgressStats `json:"egress_stats,omitempty"`
	// Mounts are the host folders the VM mounts.
	Mounts []Mount `json:"mounts,omitempty"`
	Dir    string  `json:"dir"`
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
	// Ports are the ports the VM publishes on the host (never null).
	Ports []Port `json:"ports"`
}

// Port is one port a VM publishes: connections to HostIP:HostPort on the
// host (datagrams, for udp) reach GuestPort on the guest.
type Port struct {
	// Proto is "tcp" (the default when empty in a request) or "udp".
	Proto string `json:"proto"`
	// HostIP is the host address it listens on; empty in a request means
	// 127.0.0.1, the host's loopback.
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	// Listening says bangerd listens on it now (it does while the VM runs).
	// Only answers carry it.
	Listening bool `json:"listening"`
}

// PortRef names published ports to remove: a host port, its protocol
// ("" is tcp) and, unless empty (any), its host address.
type PortRef struct {
	Proto    string `json:"proto,omitempty"`
	HostIP   string `json:"host_ip,omitempty"`
	HostPort int    `json:"host_port"`
}

// PortsRequest publishes more ports of a VM (POST /v1/vms/{name}/ports).
type PortsRequest struct {
	Ports []Port `json:"ports"`
}

// UnpublishRequest stops publishing ports of a VM
// (POST /v1/vms/{name}/ports/remove).
type UnpublishRequest struct {
	Ports []PortRef `json:"ports"`
}

// Mount is one host folder a VM mounts: Host on the host at Guest in the
// guest, read-only or not.
type Mount struct {
	Host     string `json:"host"`
	Guest    string `json:"guest"`
	ReadOnly bool   `json:"read_only,omitempty"`
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
	// WorkSize is the size of the /root disk ("32G"); empty: bangerd's
	// work_size (16G unless configured).
	WorkSize string `json:"work_size,omitempty"`
	NAT      bool   `json:"nat,omitempty"`
	// Egress is the VM's egress policy; nil is the default. A policy other
	// than open turns NAT on.
	Egress *Egress `json:"egress,omitempty"`
	// Mounts are host folders to mount at every boot (absolute paths;
	// QEMU only).
	Mounts []Mount `json:"mounts,omitempty"`
	// Ports are published on the host from the first boot.
	Ports []Port `json:"ports,omitempty"`
	// NoWait returns as soon as the hypervisor is up.
	NoWait bool `json:"no_wait,omitempty"`
	// Cold boots the VM even when a snapshot of its image fits.
	Cold bool `json:"cold,omitempty"`
}

// ForkRequest names the copy of POST /v1/vms/{name}/fork.
type ForkRequest struct {
	Name string `json:"name"`
}

// SetRequest is the body of POST /v1/vms/{name}/set: nil fields are left
// as they are.
type SetRequest struct {
	NAT *bool `json:"nat,omitempty"`
	// Egress replaces the egress policy; a policy other than open turns
	// NAT on.
	Egress *Egress `json:"egress,omitempty"`
	// WorkSize grows a stopped VM's /root disk ("32G"); it never shrinks.
	WorkSize string `json:"work_size,omitempty"`
}

// Egress is an egress policy: mode "default", "allow", "deny" or "open",
// and lists of entries (domains such as github.com or *.npmjs.org, IPv4
// networks, each with an optional :port and /tcp or /udp).
type Egress struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// EgressStats is what a VM's egress policy refused.
type EgressStats struct {
	// Refused counts dropped packets and bytes by reason: denied,
	// resolver, private, unlisted, host, spoofed.
	Refused map[string]EgressCounter `json:"refused"`
	// NamesRefused counts DNS questions answered NXDOMAIN.
	NamesRefused uint64 `json:"names_refused"`
	// Recent are the latest refused names and destinations, newest first.
	Recent []EgressDenial `json:"recent"`
	// Learned counts the addresses banger's DNS opened that have not
	// expired.
	Learned int `json:"learned"`
}

// EgressCounter is a count of refused packets.
type EgressCounter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// EgressDenial is one refused name or destination.
type EgressDenial struct {
	Time   time.Time `json:"time"`
	Name   string    `json:"name,omitempty"`
	Addr   string    `json:"addr,omitempty"`
	Reason string    `json:"reason"`
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
	// Kernel and Initrd are the image's own kernel and initramfs; empty
	// when its VMs boot the bundle's. Modules is its modules dir.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Modules string `json:"modules,omitempty"`
	// KernelVersion is the release its VMs boot, when known.
	KernelVersion string `json:"kernel_version,omitempty"`
}

// RegisterImageRequest records an existing ext4 image under a name.
type RegisterImageRequest struct {
	Name     string `json:"name"`
	Rootfs   string `json:"rootfs"`
	WorkSeed string `json:"work_seed,omitempty"`
	// Kernel and Initrd (both or neither) are an ELF kernel and its
	// initramfs the image's VMs boot instead of the bundle's; Modules is
	// their lib/modules/<release> dir.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Modules string `json:"modules,omitempty"`
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
