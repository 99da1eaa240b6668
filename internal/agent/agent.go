// Package agent is the wire protocol between bangerd and banger's guest agent (ports, operations, messages) and its host-side client.
package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"github.com/banger/banger/internal/guestconfig"
)

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
	// OpIdentity makes the guest the machine the host says it is (Identity):
	// what a guest restored from another machine's snapshot must change
	// before anyone talks to it.
	OpIdentity = "identity"
	// OpTemplate readies a guest whose snapshot is about to be a template:
	// what each restore's identity would start again (sshd, for its new
	// host keys) starts as far as it can without them.
	OpTemplate = "template"
)

// Ops are the operations this version of the agent answers; health lists
// them, so the host knows what an older agent in an image lacks.
var Ops = []string{OpHealth, OpShutdown, OpIdentity, OpMount, OpTemplate}

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
	// Detail asks health for the boot's progress too (Settled, SSHListening).
	Detail bool `json:"detail,omitempty"`
	// Identity is the identity op's argument.
	Identity *Identity `json:"identity,omitempty"`
}

// Response is one line from the guest.
type Response struct {
	OK          bool     `json:"ok"`
	Error       string   `json:"error,omitempty"`
	ID          uint64   `json:"id,omitempty"`
	Hostname    string   `json:"hostname,omitempty"`
	UptimeMS    int64    `json:"uptime_ms,omitempty"`
	SSHHostKeys []string `json:"ssh_host_keys,omitempty"`
	// Ops lists the operations the agent answers (health).
	Ops []string `json:"ops,omitempty"`
	// MachineID is the guest's /etc/machine-id (health, identity).
	MachineID string `json:"machine_id,omitempty"`
	// Settled and SSHListening answer a health request with Detail: the
	// guest's init has finished starting what it starts at boot, and sshd
	// accepts connections.
	Settled      bool `json:"settled,omitempty"`
	SSHListening bool `json:"ssh_listening,omitempty"`
	// Applied names what an identity request changed, in order.
	Applied []string `json:"applied,omitempty"`
}

// Identity is what the host makes a guest: the VM's own address, name,
// keys and secrets, replacing those of the machine a snapshot was taken
// of. Every field is optional: what is empty or false is left as it is.
// The guest applies them in the order of the fields, so the RNG is
// reseeded before keys are made.
type Identity struct {
	// TimeUnixNano sets the guest's clock (a restored guest's lags).
	TimeUnixNano int64 `json:"time_unix_nano,omitempty"`
	// Entropy is mixed into the guest's RNG, credited, and the RNG is
	// reseeded at once: two guests restored from one snapshot must not
	// draw the same numbers.
	Entropy []byte `json:"entropy,omitempty"`
	// Hostname is the guest's name; Network its address, route, MAC and
	// resolvers (the MAC reaches the hypervisor's receive filter).
	Hostname string   `json:"hostname,omitempty"`
	Network  *Network `json:"network,omitempty"`
	// MachineID is the new /etc/machine-id: 32 lowercase hex digits.
	MachineID string `json:"machine_id,omitempty"`
	// NewHostKeys replaces the guest's SSH host keys with fresh ones of the
	// same types; the answer reports them, for the host to pin.
	NewHostKeys bool `json:"new_host_keys,omitempty"`
	// OpencodePassword is written into the image's opencode password file,
	// and the opencode server restarted when it changed.
	OpencodePassword string `json:"opencode_password,omitempty"`
	// GrowFilesystems grows the root and /root ext4 filesystems, online, to
	// the size of their disks (a qcow2 overlay grows only the disk).
	GrowFilesystems bool `json:"grow_filesystems,omitempty"`
}

// Network is a guest's interface configuration.
type Network struct {
	Device string `json:"device"`
	MAC    string `json:"mac"`
	// Address is the guest's address with its prefix length, 172.30.0.5/24.
	Address string   `json:"address"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
}

// Bounds of an identity.
const (
	MaxEntropy     = 4096
	minPassword    = 16
	maxPassword    = 128
	maxDNS         = 3
	earliestClock  = 1577836800 // 2020-01-01: a clock before it is not a clock
	latestClockSec = 7258118400 // 2200-01-01
)

var (
	macRE      = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
	deviceRE   = regexp.MustCompile(`^[a-z][a-z0-9]{0,14}$`)
	passwordRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// Validate checks every field that is set; the guest applies nothing of an
// identity that does not validate.
func (id *Identity) Validate() error {
	if id.TimeUnixNano != 0 {
		if s := id.TimeUnixNano / int64(time.Second); s < earliestClock || s > latestClockSec {
			return fmt.Errorf("identity: time %d ns since 1970 is not between 2020 and 2200", id.TimeUnixNano)
		}
	}
	if len(id.Entropy) > MaxEntropy {
		return fmt.Errorf("identity: %d bytes of entropy, at most %d are taken", len(id.Entropy), MaxEntropy)
	}
	if id.Hostname != "" || id.Network != nil {
		if _, err := id.NetworkConfig(); err != nil {
			return err
		}
	}
	if id.MachineID != "" {
		if !guestconfig.ValidMachineID(id.MachineID) {
			return errors.New("identity: the machine id must be 32 lowercase hex digits, not all zero")
		}
	}
	if pw := id.OpencodePassword; pw != "" {
		if len(pw) < minPassword || len(pw) > maxPassword || !passwordRE.MatchString(pw) {
			return fmt.Errorf("identity: the opencode password must be %d to %d letters, digits, '-' or '_'", minPassword, maxPassword)
		}
	}
	return nil
}

// NetworkConfig returns the identity's hostname and network as the guest
// configures them, checked as the kernel command line's ip= is. Without a
// Network only the hostname is set (Client stays zero).
func (id *Identity) NetworkConfig() (guestconfig.Network, error) {
	var c guestconfig.Network
	c.Hostname = id.Hostname
	if c.Hostname != "" {
		// guestconfig checks the hostname of a network with an address.
		probe := guestconfig.Network{Client: netip.AddrFrom4([4]byte{192, 0, 2, 2}), PrefixLen: 24, Hostname: c.Hostname}
		if probe.Validate() != nil {
			return c, fmt.Errorf("identity: hostname %q is not a DNS label (letters, digits and '-', at most 63)", clip(c.Hostname, 64))
		}
	}
	n := id.Network
	if n == nil {
		return c, nil
	}
	if !deviceRE.MatchString(n.Device) {
		return c, fmt.Errorf("identity: device %q is not an interface name", clip(n.Device, 32))
	}
	if !macRE.MatchString(n.MAC) {
		return c, fmt.Errorf("identity: mac %q is not a lowercase MAC address", clip(n.MAC, 32))
	}
	p, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return c, fmt.Errorf("identity: address: %w", err)
	}
	c.Client, c.PrefixLen, c.Device, c.Autoconf = p.Addr(), p.Bits(), n.Device, "off"
	if n.Gateway != "" {
		if c.Gateway, err = netip.ParseAddr(n.Gateway); err != nil {
			return c, fmt.Errorf("identity: gateway: %w", err)
		}
	}
	if len(n.DNS) > maxDNS {
		return c, fmt.Errorf("identity: %d resolvers, at most %d are taken", len(n.DNS), maxDNS)
	}
	for _, d := range n.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return c, fmt.Errorf("identity: resolver: %w", err)
		}
		c.DNS = append(c.DNS, a)
	}
	// guestconfig's ip= carries two resolvers; the agent writes them itself.
	check := c
	check.DNS = nil
	if err := check.Validate(); err != nil {
		return c, fmt.Errorf("identity: %w", err)
	}
	for _, d := range c.DNS {
		if !d.Is4() {
			return c, fmt.Errorf("identity: resolver %v is not IPv4", d)
		}
	}
	return c, nil
}

// String describes what id changes, without its secrets, for logs.
func (id *Identity) String() string {
	s := "identity"
	if id.Hostname != "" {
		s += " hostname=" + id.Hostname
	}
	if id.Network != nil {
		s += " address=" + id.Network.Address + " mac=" + id.Network.MAC
	}
	if id.MachineID != "" {
		s += " machine-id"
	}
	if id.NewHostKeys {
		s += " new-host-keys"
	}
	if id.OpencodePassword != "" {
		s += " opencode-password"
	}
	if id.TimeUnixNano != 0 {
		s += " clock"
	}
	if len(id.Entropy) > 0 {
		s += fmt.Sprintf(" entropy=%dB", len(id.Entropy))
	}
	if id.GrowFilesystems {
		s += " grow"
	}
	return s
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// SSHDParkDir is a directory on the guest's tmpfs, empty at boot, whose
// *.conf banger's sshd configuration includes (SSHDParkInclude): the agent
// parks sshd there for a template's snapshot (OpTemplate).
const SSHDParkDir = "/run/banger-agent/sshd_config.d"

// SSHDParkInclude is the line of banger's sshd drop-in (SSHDDropIn) that
// includes SSHDParkDir.
const SSHDParkInclude = "Include " + SSHDParkDir + "/*.conf"

// SSHDDropIn is banger's sshd configuration in its Debian images.
const SSHDDropIn = "/etc/ssh/sshd_config.d/banger.conf"

// OpencodeEnvFile is the guest file holding the opencode server's
// password (OPENCODE_SERVER_PASSWORD=...): the image's unit reads it and
// does not start without it. bangerd writes it into a raw root disk before
// boot, and the agent writes it (identity) into a guest that runs.
const OpencodeEnvFile = "/etc/banger/opencode.env"

// OpencodeEnv is the content of OpencodeEnvFile for password pw.
func OpencodeEnv(pw string) []byte {
	return []byte("# Written by bangerd: the opencode server's basic-auth password (user opencode).\nOPENCODE_SERVER_PASSWORD=" + pw + "\n")
}
