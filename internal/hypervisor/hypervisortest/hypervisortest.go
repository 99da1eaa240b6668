// Package hypervisortest is a fake hypervisor for engine tests: its guests run banger's real agent and a real SSH server in-process, reachable through the fake's Dial, and it pauses, snapshots and restores them under the rules of the real backends.
package hypervisortest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guest/agentd"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
)

// Behavior says how the fake's next guests misbehave.
type Behavior struct {
	// FailStart makes Start fail with this error; FailRestore makes
	// Restore refuse with it, before anything starts.
	FailStart, FailRestore error
	// NoAgent makes the guest agent never answer; NoSSH the SSH server
	// refuse every connection; ExitAtBoot the "hypervisor" exit at once.
	NoAgent, NoSSH, ExitAtBoot bool
	// OldAgent makes the guests' agent one that predates the identity
	// operation (an image older than banger).
	OldAgent bool
	// KeepHostKeys makes the agent answer an identity request without
	// changing the host keys (a broken guest).
	KeepHostKeys bool
	// StallBoots makes that many of the next guests Start boots stop in
	// early kernel boot, before init: their console ends with a kernel
	// line and their agent never answers. Later starts boot.
	StallBoots int
}

// Backend is a fake hypervisor. Its "processes" live in the Backend, not
// in an engine: a second engine over the same Backend adopts them, as a
// restarted bangerd adopts hypervisors that outlived the old one.
type Backend struct {
	// BackendName is what Name returns; default "fake".
	BackendName string
	// AuthorizedKey is the public key the guests' SSH servers accept.
	AuthorizedKey ssh.PublicKey
	// Qcow2 makes the backend open qcow2 disks, as QEMU does; MemoryFiles
	// lets it keep a guest's RAM in Spec.MemoryFile.
	Qcow2, MemoryFiles bool
	// HypervisorVersion is what Version answers; default "fake 1".
	HypervisorVersion string

	mu       sync.Mutex
	next     Behavior
	nextPID  int
	byDir    map[string]*Instance
	byIP     map[netip.Addr]*Instance
	starts   int
	restores int
	services map[string]func(guest netip.Addr, c net.Conn) // by "tcp/PORT", "udp/PORT"
}

// Serve runs fn for each connection to port of any running guest, as a
// server inside the guest would: network "tcp" gets a stream, "udp" a
// connection that keeps datagram boundaries. Port 22 is the guests' SSH.
func (b *Backend) Serve(network string, port uint16, fn func(guest netip.Addr, c net.Conn)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.services == nil {
		b.services = map[string]func(netip.Addr, net.Conn){}
	}
	b.services[fmt.Sprintf("%s/%d", network, port)] = fn
}

var (
	_ hypervisor.Backend     = (*Backend)(nil)
	_ hypervisor.Restorer    = (*Backend)(nil)
	_ hypervisor.FormatTaker = (*Backend)(nil)
	_ hypervisor.MemoryFiler = (*Backend)(nil)
	_ hypervisor.Pauser      = (*Instance)(nil)
	_ hypervisor.Snapshotter = (*Instance)(nil)
)

// Name implements hypervisor.Backend.
func (b *Backend) Name() string {
	if b.BackendName == "" {
		return "fake"
	}
	return b.BackendName
}

// Available implements hypervisor.Backend.
func (b *Backend) Available() error { return nil }

// TakesFormat implements hypervisor.FormatTaker.
func (b *Backend) TakesFormat(f hypervisor.DiskFormat) bool {
	return f == "" || f == hypervisor.DiskRaw || (b.Qcow2 && f == hypervisor.DiskQcow2)
}

// TakesMemoryFile implements hypervisor.MemoryFiler.
func (b *Backend) TakesMemoryFile() bool { return b.MemoryFiles }

// Version implements hypervisor.Restorer.
func (b *Backend) Version(context.Context) (string, error) {
	if b.HypervisorVersion == "" {
		return "fake 1", nil
	}
	return b.HypervisorVersion, nil
}

// Misbehave sets how the next guests behave.
func (b *Backend) Misbehave(bh Behavior) {
	b.mu.Lock()
	b.next = bh
	b.mu.Unlock()
}

// Starts is how many guests Start booted; Restores how many Restore
// brought back from a snapshot.
func (b *Backend) Starts() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.starts
}

// Restores is how many guests Restore brought back from a snapshot.
func (b *Backend) Restores() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.restores
}

// Running lists the live instances.
func (b *Backend) Running() []*Instance {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*Instance
	for _, i := range b.byDir {
		if !i.Exited() {
			out = append(out, i)
		}
	}
	return out
}

// checkSpec refuses a spec a real backend would: a disk file that is
// missing, or of a format this backend does not open; a memory file that
// exists or that it cannot keep.
func (b *Backend) checkSpec(spec hypervisor.Spec) error {
	for _, d := range spec.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("disk %s: %w", d.ID, err)
		}
		if !b.TakesFormat(d.Format) {
			return fmt.Errorf("disk %s: this backend takes raw files only", d.ID)
		}
		if d.Format == hypervisor.DiskQcow2 {
			head := make([]byte, 4)
			if f, err := os.Open(d.Path); err == nil {
				io.ReadFull(f, head)
				f.Close()
			}
			if string(head) != "QFI\xfb" {
				return fmt.Errorf("disk %s: %s is not a qcow2 file", d.ID, d.Path)
			}
		}
	}
	return nil
}

// Start implements hypervisor.Backend: it "boots" a guest from the spec's
// command line (its address comes from ip=).
func (b *Backend) Start(ctx context.Context, spec hypervisor.Spec) (hypervisor.Instance, error) {
	b.mu.Lock()
	bh := b.next
	if b.byDir == nil {
		b.byDir, b.byIP = map[string]*Instance{}, map[netip.Addr]*Instance{}
	}
	if old := b.byDir[spec.Dir]; old != nil && !old.Exited() {
		b.mu.Unlock()
		return nil, fmt.Errorf("fake: vm %s already runs as pid %d", spec.ID, old.pid)
	}
	console := "fake console of %s: Run /init as init process"
	if b.next.StallBoots > 0 {
		b.next.StallBoots--
		bh.NoAgent = true
		console = "[    0.912345] smp: Brought up 1 node, 2 CPUs (the fake kernel of %s stops here)"
	}
	b.mu.Unlock()
	if bh.FailStart != nil {
		return nil, bh.FailStart
	}
	for _, s := range spec.Shares {
		// QEMU connects to each share's server as it starts.
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", s.Socket)
		if err != nil {
			return nil, fmt.Errorf("fake: starting %s: share %s: %w", spec.ID, s.Tag, err)
		}
		c.Close()
	}
	net, err := guestconfig.ParseNetwork(spec.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("fake: starting %s: %w", spec.ID, err)
	}
	if err := b.checkSpec(spec); err != nil {
		return nil, fmt.Errorf("fake: starting %s: %w", spec.ID, err)
	}
	if spec.MemoryFile != "" {
		if !b.MemoryFiles {
			return nil, fmt.Errorf("fake: starting %s: this backend keeps no memory file", spec.ID)
		}
		f, err := os.OpenFile(spec.MemoryFile, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("fake: starting %s: creating its memory file: %w", spec.ID, err)
		}
		f.Truncate(int64(spec.MemoryMiB) << 20)
		f.Close()
	}
	if err := appendConsole(spec, fmt.Sprintf(console, net.Hostname)); err != nil {
		return nil, err
	}
	key, err := newHostKey()
	if err != nil {
		return nil, err
	}
	mac := ""
	if len(spec.NICs) > 0 {
		mac = spec.NICs[0].MAC
	}
	g := Guest{Hostname: net.Hostname, IP: net.Client, MAC: mac, MachineID: randomHex(16), BootID: randomHex(16),
		Booted: time.Now(), Files: map[string]string{}, hostKey: key}
	inst, err := b.newInstance(spec, g, bh)
	if err != nil {
		return nil, err
	}
	inst.memoryFile = spec.MemoryFile
	b.mu.Lock()
	b.starts++
	b.byDir[spec.Dir] = inst
	b.byIP[net.Client] = inst
	b.mu.Unlock()
	if bh.ExitAtBoot {
		inst.exit(hypervisor.Exit{Known: true, Code: 1})
	}
	return inst, nil
}

func appendConsole(spec hypervisor.Spec, line string) error {
	if spec.ConsoleLog == "" {
		return nil
	}
	// A hypervisor appends the guest's serial console to its log.
	f, err := os.OpenFile(spec.ConsoleLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("fake: starting %s: console log: %w", spec.ID, err)
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, line)
	return err
}

// Attach implements hypervisor.Backend.
func (b *Backend) Attach(_ context.Context, spec hypervisor.Spec) (hypervisor.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	inst := b.byDir[spec.Dir]
	if inst == nil || inst.Exited() {
		return nil, fmt.Errorf("fake: attaching to %s: %w", spec.ID, hypervisor.ErrNotRunning)
	}
	// An adopter does not learn how the process ends.
	return &adopted{inst}, nil
}

// Dial connects to a port of a running guest: TCP port 22, its SSH
// server, or a port Serve gave a server.
func (b *Backend) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	inst := b.byIP[ap.Addr()]
	svc := b.services[fmt.Sprintf("%s/%d", network, ap.Port())]
	b.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	if inst == nil || inst.Exited() || inst.isPaused() {
		return nil, refused
	}
	if network == "tcp" && ap.Port() == 22 {
		if inst.behavior.NoSSH || inst.Guest().SSHParked {
			return nil, refused
		}
		client, server, err := connPair()
		if err != nil {
			return nil, err
		}
		go inst.serveSSH(server)
		return client, nil
	}
	if svc == nil || network != "tcp" && network != "udp" {
		return nil, refused
	}
	typ := syscall.SOCK_STREAM
	if network == "udp" {
		typ = syscall.SOCK_DGRAM
	}
	client, server, err := socketPair(typ)
	if err != nil {
		return nil, err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		svc(ap.Addr(), server)
	}()
	go func() {
		// The guest's end goes when its server is done or the guest ends.
		select {
		case <-served:
		case <-inst.done:
		}
		server.Close()
	}()
	return client, nil
}

// Guest is what a fake guest is: its identity, and files that stand for
// what runs in it (they survive a snapshot and a restore, as memory does).
type Guest struct {
	Hostname  string
	IP        netip.Addr
	MAC       string
	MachineID string
	// BootID is made at boot and kept by restores: a restored guest has
	// the BootID of the machine it was snapshotted from.
	BootID           string
	Booted           time.Time
	OpencodePassword string
	// Clock is the last time the host set; Entropy a digest of each
	// seeding; Grown counts filesystem growths.
	Clock   time.Time
	Entropy []string
	Grown   int
	Files   map[string]string
	// SSHParked is a template's sshd, waiting for an identity's new host
	// keys (agentd.System's ParkSSHD): it refuses connections until then.
	SSHParked bool
	hostKey   ed25519.PrivateKey
}

// HostKey is the guest's SSH host public key.
func (g Guest) HostKey() ssh.PublicKey {
	pub, _ := ssh.NewPublicKey(g.hostKey.Public())
	return pub
}

func (g Guest) clone() Guest {
	g.Entropy = slices.Clone(g.Entropy)
	g.Files = maps.Clone(g.Files)
	return g
}

// Instance is one fake hypervisor process.
type Instance struct {
	b        *Backend
	spec     hypervisor.Spec
	pid      int
	behavior Behavior
	agent    *agentd.Server
	restored bool

	mu         sync.Mutex
	guest      Guest
	paused     bool
	migrated   bool   // snapshotted, and not run since
	memoryFile string // Spec.MemoryFile, until a snapshot moves it
	spent      bool   // its memory file went into a snapshot
	done       chan struct{}
	end        hypervisor.Exit
	requested  bool
	mounts     []agent.Mount
}

func (b *Backend) newInstance(spec hypervisor.Spec, g Guest, bh Behavior) (*Instance, error) {
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.nextPID++
	pid := 100000 + b.nextPID
	b.mu.Unlock()
	inst := &Instance{b: b, spec: spec, pid: pid, guest: g, behavior: bh, done: make(chan struct{})}
	inst.agent = &agentd.Server{System: &system{inst}, Mount: inst.mount, Shutdown: func() {
		inst.exit(hypervisor.Exit{Known: true, Code: 0})
	}}
	return inst, nil
}

// PID implements hypervisor.Instance.
func (i *Instance) PID() int { return i.pid }

// Spec is what the instance was started or restored with.
func (i *Instance) Spec() hypervisor.Spec { return i.spec }

// Restored reports whether the instance came from a snapshot.
func (i *Instance) Restored() bool { return i.restored }

// Guest returns the guest as it is now.
func (i *Instance) Guest() Guest {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.guest.clone()
}

// SetFile makes the guest hold a file: a stand-in for its disks and
// processes, which a snapshot carries along.
func (i *Instance) SetFile(name, content string) {
	i.mu.Lock()
	i.guest.Files[name] = content
	i.mu.Unlock()
}

func (i *Instance) isPaused() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.paused
}

// DialAgent implements hypervisor.Instance.
func (i *Instance) DialAgent(ctx context.Context) (net.Conn, error) {
	if i.Exited() {
		return nil, hypervisor.ErrNotRunning
	}
	if i.behavior.NoAgent || i.isPaused() {
		return nil, errors.New("fake: the agent does not answer")
	}
	c, s, err := connPair()
	if err != nil {
		return nil, err
	}
	go func() {
		defer s.Close()
		if i.behavior.OldAgent {
			oldAgent(s, i)
			return
		}
		i.agent.ServeConn(s)
	}()
	return c, nil
}

// oldAgent answers as an agent from before the identity operation did:
// health without its ops, and every other op unknown.
func oldAgent(rw io.ReadWriter, i *Instance) {
	var req agent.Request
	line, _ := readLine(rw)
	if json.Unmarshal(line, &req) != nil {
		return
	}
	resp := agent.Response{ID: req.ID, Error: fmt.Sprintf("unknown op %q: use \"health\" or \"shutdown\"", req.Op)}
	switch req.Op {
	case agent.OpHealth:
		g := i.Guest()
		resp = agent.Response{OK: true, ID: req.ID, Hostname: g.Hostname, UptimeMS: 1, SSHHostKeys: []string{authorizedLine(g.HostKey())}}
	case agent.OpShutdown:
		resp = agent.Response{OK: true, ID: req.ID}
		defer i.exit(hypervisor.Exit{Known: true, Code: 0})
	}
	b, _ := json.Marshal(resp)
	rw.Write(append(b, '\n'))
}

func readLine(r io.Reader) ([]byte, error) {
	var out []byte
	b := make([]byte, 1)
	for len(out) < agent.MaxLine {
		if _, err := r.Read(b); err != nil {
			return out, err
		}
		if b[0] == '\n' {
			return out, nil
		}
		out = append(out, b[0])
	}
	return out, errors.New("line too long")
}

// Shutdown implements hypervisor.Instance.
func (i *Instance) Shutdown(context.Context) error {
	i.mu.Lock()
	i.requested = true
	i.mu.Unlock()
	i.exit(hypervisor.Exit{Known: true, Code: 0})
	return nil
}

// Kill implements hypervisor.Instance.
func (i *Instance) Kill() error {
	i.mu.Lock()
	i.requested = true
	i.mu.Unlock()
	i.exit(hypervisor.Exit{Known: true, Code: -1, Signal: syscall.SIGKILL})
	return nil
}

// Crash ends the process as a SIGKILL nobody asked for would.
func (i *Instance) Crash() { i.exit(hypervisor.Exit{Known: true, Code: -1, Signal: syscall.SIGKILL}) }

// PowerOff ends the process as a poweroff from inside the guest would: a
// clean exit nobody on the host asked for.
func (i *Instance) PowerOff() { i.exit(hypervisor.Exit{Known: true, Code: 0}) }

// MarkRequested records that banger ends the process.
func (i *Instance) MarkRequested() {
	i.mu.Lock()
	i.requested = true
	i.mu.Unlock()
}

func (i *Instance) exit(e hypervisor.Exit) {
	i.mu.Lock()
	defer i.mu.Unlock()
	select {
	case <-i.done:
		return
	default:
	}
	e.Requested = i.requested
	i.end = e
	close(i.done)
}

// Wait implements hypervisor.Instance.
func (i *Instance) Wait(ctx context.Context) error {
	select {
	case <-i.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited implements hypervisor.Instance.
func (i *Instance) Exited() bool {
	select {
	case <-i.done:
		return true
	default:
		return false
	}
}

// Exit implements hypervisor.Instance.
func (i *Instance) Exit() hypervisor.Exit {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.end
}

// Pause implements hypervisor.Pauser.
func (i *Instance) Pause(context.Context) error {
	if i.Exited() {
		return fmt.Errorf("fake: pausing %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	i.mu.Lock()
	i.paused = true
	i.mu.Unlock()
	return nil
}

// Resume implements hypervisor.Pauser. As with QEMU, a guest whose memory
// file went into a snapshot must never run again.
func (i *Instance) Resume(context.Context) error {
	if i.Exited() {
		return fmt.Errorf("fake: resuming %s: %w", i.spec.ID, hypervisor.ErrNotRunning)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.spent {
		return fmt.Errorf("fake: resuming %s: its memory file was moved into a snapshot: kill the VM instead", i.spec.ID)
	}
	i.paused, i.migrated = false, false
	return nil
}

// snapshotFile is the fake's snapshot: the machine and the guest.
const snapshotFile = "fake-snapshot.json"

// memoryName is a shared-memory snapshot's RAM file.
const memoryName = "memory.ram"

type snapshot struct {
	Format    int         `json:"format"`
	Version   string      `json:"version"`
	VCPUs     int         `json:"vcpus"`
	MemoryMiB int         `json:"memory_mib"`
	Kernel    fileID      `json:"kernel"`
	Initrd    fileID      `json:"initrd"`
	Disks     []string    `json:"disks"`
	NICs      []string    `json:"nics"`
	Shared    bool        `json:"shared"`
	Guest     guestRecord `json:"guest"`
}

type fileID struct {
	Size    int64 `json:"size"`
	ModTime int64 `json:"mtime_ns"`
}

type guestRecord struct {
	Hostname         string            `json:"hostname"`
	IP               string            `json:"ip"`
	MAC              string            `json:"mac"`
	MachineID        string            `json:"machine_id"`
	BootID           string            `json:"boot_id"`
	Booted           time.Time         `json:"booted"`
	OpencodePassword string            `json:"opencode_password"`
	Files            map[string]string `json:"files"`
	HostKey          string            `json:"host_key"`
	SSHParked        bool              `json:"ssh_parked"`
}

// SnapshotSSHParked says whether the guest in the snapshot at dir was
// taken with its sshd parked (System's ParkSSHD).
func SnapshotSSHParked(dir string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, snapshotFile))
	if err != nil {
		return false, err
	}
	var s snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return false, fmt.Errorf("fake: reading the snapshot in %s: %w", dir, err)
	}
	return s.Guest.SSHParked, nil
}

func identify(path string) fileID {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}
	}
	return fileID{Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
}

func ids[T any](xs []T, id func(T) string) []string {
	var out []string
	for _, x := range xs {
		out = append(out, id(x))
	}
	return out
}

// Snapshot implements hypervisor.Snapshotter with QEMU's rules: the VM must
// be paused and not snapshotted since it last ran, dir empty; a guest with
// its RAM in a memory file hands the file to the snapshot and is spent.
func (i *Instance) Snapshot(_ context.Context, dir string) error {
	fail := func(err error) error { return fmt.Errorf("fake: snapshotting %s into %s: %w", i.spec.ID, dir, err) }
	if i.Exited() {
		return fail(hypervisor.ErrNotRunning)
	}
	if !filepath.IsAbs(dir) {
		return fail(errors.New("not an absolute path"))
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return fail(err)
	} else if len(ents) > 0 {
		return fail(errors.New("the directory is not empty"))
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.paused {
		return fail(errors.New("the VM is running, not paused: pause it first"))
	}
	if i.migrated {
		return fail(errors.New("the VM was snapshotted and has not run since: resume it first"))
	}
	v, _ := i.b.Version(context.Background())
	keyPEM, err := ssh.MarshalPrivateKey(i.guest.hostKey, "")
	if err != nil {
		return fail(err)
	}
	s := snapshot{Format: 1, Version: v, VCPUs: i.spec.VCPUs, MemoryMiB: i.spec.MemoryMiB,
		Kernel: identify(i.spec.Kernel), Initrd: identify(i.spec.Initrd),
		Disks: ids(i.spec.Disks, func(d hypervisor.Disk) string { return d.ID }),
		NICs:  ids(i.spec.NICs, func(n hypervisor.NIC) string { return n.ID }),
		Guest: guestRecord{Hostname: i.guest.Hostname, IP: i.guest.IP.String(), MAC: i.guest.MAC, MachineID: i.guest.MachineID,
			BootID: i.guest.BootID, Booted: i.guest.Booted, OpencodePassword: i.guest.OpencodePassword,
			Files: i.guest.Files, HostKey: string(pem.EncodeToMemory(keyPEM)), SSHParked: i.guest.SSHParked}}
	if i.memoryFile != "" {
		if err := os.Rename(i.memoryFile, filepath.Join(dir, memoryName)); err != nil {
			return fail(err)
		}
		s.Shared, i.spent, i.memoryFile = true, true, ""
	}
	data, _ := json.Marshal(s)
	if err := os.WriteFile(filepath.Join(dir, snapshotFile), data, 0o600); err != nil {
		return fail(err)
	}
	i.migrated = true
	return nil
}

// Restore implements hypervisor.Restorer: it refuses, before anything
// starts, a snapshot that does not fit spec (vCPUs, memory, kernel, initrd,
// disks, NICs, version) or a spec with a memory file, and brings back the
// snapshotted guest as it was: its identity, its files, its uptime.
func (b *Backend) Restore(_ context.Context, spec hypervisor.Spec, dir string) (hypervisor.Instance, error) {
	fail := func(err error) (hypervisor.Instance, error) {
		return nil, fmt.Errorf("fake: restoring %s from %s: %w", spec.ID, dir, err)
	}
	b.mu.Lock()
	bh := b.next
	if b.byDir == nil {
		b.byDir, b.byIP = map[string]*Instance{}, map[netip.Addr]*Instance{}
	}
	old := b.byDir[spec.Dir]
	b.mu.Unlock()
	if old != nil && !old.Exited() {
		return fail(fmt.Errorf("it already runs as pid %d", old.pid))
	}
	if bh.FailRestore != nil {
		return fail(bh.FailRestore)
	}
	data, err := os.ReadFile(filepath.Join(dir, snapshotFile))
	if err != nil {
		return fail(err)
	}
	var s snapshot
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fail(fmt.Errorf("the snapshot does not parse: %w: take a new one", err))
	}
	if s.Format != 1 {
		return fail(fmt.Errorf("snapshot format %d: take a new one", s.Format))
	}
	v, _ := b.Version(context.Background())
	switch {
	case spec.MemoryFile != "":
		return fail(errors.New("a restored VM's memory is private to it: leave MemoryFile empty"))
	case s.Version != v:
		return fail(fmt.Errorf("the snapshot was taken by %s, this is %s: boot it cold", s.Version, v))
	case s.VCPUs != spec.VCPUs || s.MemoryMiB != spec.MemoryMiB:
		return fail(fmt.Errorf("the snapshot is of a VM with %d vCPUs and %d MiB, the spec asks for %d and %d: boot it cold", s.VCPUs, s.MemoryMiB, spec.VCPUs, spec.MemoryMiB))
	case s.Kernel != identify(spec.Kernel) || s.Initrd != identify(spec.Initrd):
		return fail(errors.New("the kernel or initrd is not the one the snapshotted VM booted: boot it cold"))
	case !slices.Equal(s.Disks, ids(spec.Disks, func(d hypervisor.Disk) string { return d.ID })):
		return fail(fmt.Errorf("the snapshot has disks %v, the spec others", s.Disks))
	case !slices.Equal(s.NICs, ids(spec.NICs, func(n hypervisor.NIC) string { return n.ID })):
		return fail(fmt.Errorf("the snapshot has nics %v, the spec others", s.NICs))
	}
	if s.Shared {
		if _, err := os.Stat(filepath.Join(dir, memoryName)); err != nil {
			return fail(fmt.Errorf("the snapshot is incomplete: %w", err))
		}
	}
	if err := b.checkSpec(spec); err != nil {
		return fail(err)
	}
	block, _ := pem.Decode([]byte(s.Guest.HostKey))
	if block == nil {
		return fail(errors.New("the snapshot's guest has no host key"))
	}
	key, err := ssh.ParseRawPrivateKey(pem.EncodeToMemory(block))
	if err != nil {
		return fail(err)
	}
	ed, ok := key.(*ed25519.PrivateKey)
	if !ok {
		return fail(errors.New("the snapshot's host key is not ed25519"))
	}
	ip, err := netip.ParseAddr(s.Guest.IP)
	if err != nil {
		return fail(err)
	}
	if err := appendConsole(spec, "fake console of a restore of "+s.Guest.Hostname); err != nil {
		return nil, err
	}
	g := Guest{Hostname: s.Guest.Hostname, IP: ip, MAC: s.Guest.MAC, MachineID: s.Guest.MachineID, BootID: s.Guest.BootID,
		Booted: s.Guest.Booted, OpencodePassword: s.Guest.OpencodePassword, Files: s.Guest.Files, SSHParked: s.Guest.SSHParked, hostKey: *ed}
	if g.Files == nil {
		g.Files = map[string]string{}
	}
	inst, err := b.newInstance(spec, g, bh)
	if err != nil {
		return nil, err
	}
	inst.restored = true
	b.mu.Lock()
	b.restores++
	b.byDir[spec.Dir] = inst
	// The snapshotted machine may still run with that address (a fork's
	// source): it keeps answering there.
	if cur := b.byIP[ip]; cur == nil || cur.Exited() {
		b.byIP[ip] = inst
	}
	b.mu.Unlock()
	return inst, nil
}

// serveSSH runs one SSH handshake with the guest's host key, letting in the
// backend's authorized key.
func (i *Instance) serveSSH(c net.Conn) {
	defer c.Close()
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if i.b.AuthorizedKey != nil && string(k.Marshal()) == string(i.b.AuthorizedKey.Marshal()) {
			return &ssh.Permissions{}, nil
		}
		return nil, errors.New("fake sshd: key not authorized")
	}}
	signer, err := ssh.NewSignerFromKey(i.Guest().hostKey)
	if err != nil {
		return
	}
	cfg.AddHostKey(signer)
	conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for ch := range chans {
		ch.Reject(ssh.Prohibited, "fake sshd runs no sessions")
	}
}

// system is the fake guest as its agent sees it: what the identity
// operation changes is the Instance's Guest, never the host running the
// test.
type system struct{ i *Instance }

var _ agentd.System = (*system)(nil)

func (s *system) Hostname() (string, error) { return s.i.Guest().Hostname, nil }
func (s *system) UptimeMS() int64           { return time.Since(s.i.Guest().Booted).Milliseconds() + 1 }
func (s *system) MachineID() string         { return s.i.Guest().MachineID }
func (s *system) HostKeys() []string        { return []string{authorizedLine(s.i.Guest().HostKey())} }
func (s *system) Settled(context.Context) bool {
	return true
}
func (s *system) SSHListening() bool { return !s.i.behavior.NoSSH && !s.i.Guest().SSHParked }

func (s *system) update(fn func(g *Guest)) {
	s.i.mu.Lock()
	fn(&s.i.guest)
	s.i.mu.Unlock()
}

func (s *system) SetClock(t time.Time) error {
	s.update(func(g *Guest) { g.Clock = t })
	return nil
}

func (s *system) AddEntropy(b []byte) error {
	sum := sha256.Sum256(b)
	s.update(func(g *Guest) { g.Entropy = append(g.Entropy, hex.EncodeToString(sum[:])) })
	return nil
}

// SetNetwork moves the guest to its new address: Dial finds it there.
func (s *system) SetNetwork(_ context.Context, n guestconfig.Network, mac string) error {
	var old netip.Addr
	s.update(func(g *Guest) {
		if n.Hostname != "" {
			g.Hostname = n.Hostname
		}
		if n.Client.IsValid() {
			old, g.IP = g.IP, n.Client
		}
		if mac != "" {
			g.MAC = mac
		}
	})
	if n.Client.IsValid() {
		b := s.i.b
		b.mu.Lock()
		if b.byIP[old] == s.i {
			delete(b.byIP, old)
		}
		b.byIP[n.Client] = s.i
		b.mu.Unlock()
	}
	return nil
}

func (s *system) SetMachineID(id string) error {
	s.update(func(g *Guest) { g.MachineID = id })
	return nil
}

func (s *system) NewHostKeys(context.Context) error {
	s.update(func(g *Guest) { g.SSHParked = false })
	if s.i.behavior.KeepHostKeys {
		return nil
	}
	key, err := newHostKey()
	if err != nil {
		return err
	}
	s.update(func(g *Guest) { g.hostKey = key })
	return nil
}

func (s *system) SetOpencodePassword(_ context.Context, pw string) (bool, error) {
	changed := false
	s.update(func(g *Guest) { changed, g.OpencodePassword = g.OpencodePassword != pw, pw })
	return changed, nil
}

func (s *system) ParkSSHD(context.Context) error {
	s.update(func(g *Guest) { g.SSHParked = true })
	return nil
}

func (s *system) GrowFilesystems(context.Context) error {
	s.update(func(g *Guest) { g.Grown++ })
	return nil
}

// Sync: the fake guest's state is in memory, durable as it is.
func (s *system) Sync() error { return nil }

func newHostKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return priv, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func authorizedLine(k ssh.PublicKey) string {
	return string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(k)))
}

// adopted is an instance seen by an engine that did not start it.
type adopted struct{ *Instance }

// Exit implements hypervisor.Instance: an adopter cannot know.
func (a *adopted) Exit() hypervisor.Exit {
	e := a.Instance.Exit()
	return hypervisor.Exit{Requested: e.Requested}
}

// connPair returns the two ends of a connected Unix stream socket. Unlike
// net.Pipe its writes are buffered, as a TCP or vsock connection's are, so
// both ends may write first (as SSH's version exchange does).
func connPair() (net.Conn, net.Conn, error) { return socketPair(syscall.SOCK_STREAM) }

// socketPair returns the two ends of a connected Unix socket of type typ.
func socketPair(typ int) (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "fake-conn")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			for _, prev := range conns[:i] {
				prev.Close()
			}
			if i == 0 {
				syscall.Close(fds[1])
			}
			return nil, nil, fmt.Errorf("socketpair conn: %w", err)
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}
