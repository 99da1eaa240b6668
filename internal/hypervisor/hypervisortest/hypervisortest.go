// Package hypervisortest is a fake hypervisor for engine tests: its guests run banger's real agent and a real SSH server in-process, reachable through the fake's Dial.
package hypervisortest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guest/agentd"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
)

// Behavior says how the fake's next guests misbehave.
type Behavior struct {
	// FailStart makes Start fail with this error.
	FailStart error
	// NoAgent makes the guest agent never answer; NoSSH the SSH server
	// refuse every connection; ExitAtBoot the "hypervisor" exit at once.
	NoAgent, NoSSH, ExitAtBoot bool
}

// Backend is a fake hypervisor. Its "processes" live in the Backend, not
// in an engine: a second engine over the same Backend adopts them, as a
// restarted bangerd adopts hypervisors that outlived the old one.
type Backend struct {
	// BackendName is what Name returns; default "fake".
	BackendName string
	// AuthorizedKey is the public key the guests' SSH servers accept.
	AuthorizedKey ssh.PublicKey

	mu       sync.Mutex
	next     Behavior
	nextPID  int
	byDir    map[string]*Instance
	byIP     map[netip.Addr]*Instance
	starts   int
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

var _ hypervisor.Backend = (*Backend)(nil)

// Name implements hypervisor.Backend.
func (b *Backend) Name() string {
	if b.BackendName == "" {
		return "fake"
	}
	return b.BackendName
}

// Available implements hypervisor.Backend.
func (b *Backend) Available() error { return nil }

// Misbehave sets how the next guests behave.
func (b *Backend) Misbehave(bh Behavior) {
	b.mu.Lock()
	b.next = bh
	b.mu.Unlock()
}

// Starts is how many guests Start booted.
func (b *Backend) Starts() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.starts
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
	for _, d := range spec.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("fake: starting %s: disk %s: %w", spec.ID, d.ID, err)
		}
	}
	if spec.ConsoleLog != "" {
		// A hypervisor appends the guest's serial console to its log.
		f, err := os.OpenFile(spec.ConsoleLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("fake: starting %s: console log: %w", spec.ID, err)
		}
		fmt.Fprintf(f, "fake console of %s\n", net.Hostname)
		f.Close()
	}
	inst, err := b.newInstance(spec, net.Client, net.Hostname, bh)
	if err != nil {
		return nil, err
	}
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
	if inst == nil || inst.Exited() {
		return nil, refused
	}
	if network == "tcp" && ap.Port() == 22 {
		if inst.behavior.NoSSH {
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
		svc(inst.ip, server)
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

// Instance is one fake hypervisor process.
type Instance struct {
	b        *Backend
	spec     hypervisor.Spec
	pid      int
	ip       netip.Addr
	behavior Behavior
	hostKey  ssh.Signer
	agent    *agentd.Server
	keyFile  string

	mu        sync.Mutex
	done      chan struct{}
	end       hypervisor.Exit
	requested bool
	mounts    []agent.Mount
}

func (b *Backend) newInstance(spec hypervisor.Spec, ip netip.Addr, hostname string, bh Behavior) (*Instance, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	// The agent reads its host key file as the guest's sshd made it.
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	keyFile := filepath.Join(spec.Dir, "fake_ssh_host_ed25519_key.pub")
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.nextPID++
	pid := 100000 + b.nextPID
	b.mu.Unlock()
	inst := &Instance{b: b, spec: spec, pid: pid, ip: ip, behavior: bh, hostKey: signer, keyFile: keyFile, done: make(chan struct{})}
	inst.agent = &agentd.Server{HostKeyGlob: keyFile, Mount: inst.mount, Shutdown: func() {
		inst.exit(hypervisor.Exit{Known: true, Code: 0})
	}}
	_ = hostname
	return inst, nil
}

// PID implements hypervisor.Instance.
func (i *Instance) PID() int { return i.pid }

// Spec is what the instance was started with.
func (i *Instance) Spec() hypervisor.Spec { return i.spec }

// DialAgent implements hypervisor.Instance.
func (i *Instance) DialAgent(ctx context.Context) (net.Conn, error) {
	if i.Exited() {
		return nil, hypervisor.ErrNotRunning
	}
	if i.behavior.NoAgent {
		return nil, errors.New("fake: the agent does not answer")
	}
	c, s, err := connPair()
	if err != nil {
		return nil, err
	}
	go func() {
		defer s.Close()
		i.agent.ServeConn(s)
	}()
	return c, nil
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
	cfg.AddHostKey(i.hostKey)
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
