// Package agent is the wire protocol between bangerd and banger's guest agent (ports, operations, messages) and its host-side client.
package agent

// Port is the vsock port the guest agent listens on.
const Port = 1024

// SerialName is the virtio-serial port name the guest agent uses when vsock
// is not available (guest path /dev/virtio-ports/<name>).
const SerialName = "org.banger.agent"

// SerialPath is the udev path of the agent's virtio-serial port.
const SerialPath = "/dev/virtio-ports/" + SerialName

// Op names.
const (
	OpHealth   = "health"
	OpShutdown = "shutdown"
	// OpMount mounts the request's host folders (virtio-fs devices); ones
	// already mounted are left as they are.
	OpMount = "mount"
)

// MaxLine bounds one protocol line, both ways.
const MaxLine = 1 << 20

// Request is one line from the host.
type Request struct {
	Op string `json:"op"`
	// ID is echoed in the response when set, so a client can skip a stale
	// answer left on a shared stream (virtio-serial) by an earlier request.
	ID uint64 `json:"id,omitempty"`
	// Mounts are OpMount's folders.
	Mounts []Mount `json:"mounts,omitempty"`
}

// Response is one line from the guest.
type Response struct {
	OK          bool     `json:"ok"`
	Error       string   `json:"error,omitempty"`
	ID          uint64   `json:"id,omitempty"`
	Hostname    string   `json:"hostname,omitempty"`
	UptimeMS    int64    `json:"uptime_ms,omitempty"`
	SSHHostKeys []string `json:"ssh_host_keys,omitempty"`
}
