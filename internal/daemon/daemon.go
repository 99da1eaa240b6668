// Package daemon is bangerd: it owns VM state, hypervisor processes and host networking, and serves the API.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/firecracker"
	"github.com/banger/banger/internal/hypervisor/qemu"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/web"
	"github.com/banger/banger/internal/web/login"
)

// Version is bangerd's version, set at build time.
var Version = "dev"

// Options configure a Daemon.
type Options struct {
	Config config.Config
	Paths  config.Paths
	Log    *slog.Logger
	Runner runner.Runner
}

// Daemon is one running bangerd.
type Daemon struct {
	cfg   config.Config
	paths config.Paths
	log   *slog.Logger
	r     runner.Runner
	// names are this owner's bridge, subnet, device prefixes and tables.
	names network.Names
	uid   int
	lock  *os.File
	store *store.Store
	net   *network.Manager
	nat   *nat.Manager
	pool  *network.Pool
	// isolation keeps guests off each other's private ports.
	isolation *isolation.Manager
	dns       *dns.Server
	// dnsRedirect sends the bridge address's port 53 to an unprivileged
	// DNS port; nil when bangerd binds port 53 itself.
	dnsRedirect *dns.Redirect
	// guestDNS is the resolver guests get on the bridge, once it answers.
	guestDNS bool
	started  time.Time
	// caps are the VM capabilities, in the order they are prepared.
	caps capabilities

	backends map[string]hypervisor.Backend

	// ctx is the daemon's own lifetime: long operations and watchers hang
	// off it, never off an RPC request's context.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	instances map[string]hypervisor.Instance // by VM id
	locks     map[string]*sync.Mutex         // by VM name
	booting   map[string]context.CancelFunc  // readiness waits, by VM id

	shutdown     chan struct{}
	shutdownOnce sync.Once
}

// New prepares a daemon: takes the single-instance lock beside the
// database, then opens the store.
func New(opts Options) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Runner == nil {
		opts.Runner = runner.Default
	}
	for _, dir := range []string{opts.Paths.StateDir, opts.Paths.DataDir, opts.Paths.RuntimeDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	lockPath := opts.Paths.Lock
	if lockPath == "" {
		lockPath = filepath.Join(opts.Paths.StateDir, "bangerd.lock")
	}
	lock, err := lockFile(lockPath)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(opts.Paths.DB)
	if err != nil {
		lock.Close()
		return nil, err
	}
	uid := os.Geteuid()
	names := opts.Config.Names(uid)
	d := &Daemon{
		cfg:   opts.Config,
		paths: opts.Paths,
		log:   opts.Log,
		r:     opts.Runner,
		names: names,
		uid:   uid,
		lock:  lock,
		store: st,
		net: &network.Manager{
			R:      opts.Runner,
			Bridge: names.Bridge,
			Subnet: names.Subnet,
		},
		backends: map[string]hypervisor.Backend{
			"qemu":        &qemu.Backend{Binary: opts.Config.QEMUBinary, Log: opts.Log.With("backend", "qemu")},
			"firecracker": &firecracker.Backend{Binary: opts.Config.FirecrackerBinary, Log: opts.Log.With("backend", "firecracker")},
		},
		instances: map[string]hypervisor.Instance{},
		locks:     map[string]*sync.Mutex{},
		booting:   map[string]context.CancelFunc{},
		shutdown:  make(chan struct{}),
		started:   time.Now(),
	}
	d.nat = &nat.Manager{R: opts.Runner, Table: names.Table, Bridge: names.Bridge, Subnet: names.Subnet, Log: opts.Log.With("component", "nat")}
	d.pool = &network.Pool{M: d.net, Size: opts.Config.TAPPoolSize, Prefix: names.PoolPrefix, UID: os.Getuid(), GID: os.Getgid(), Log: opts.Log.With("component", "tap-pool")}
	d.isolation = &isolation.Manager{R: opts.Runner, Table: names.Table, Ports: opts.Config.GuestPrivatePorts, Bridge: names.Bridge,
		TAPPrefixes: []string{names.TAPPrefix, names.PoolPrefix}}
	if port := opts.Config.BridgeDNSPort(uid); port != 53 {
		d.dnsRedirect = &dns.Redirect{R: opts.Runner, Table: names.Table + "_dns", Bridge: names.Bridge, Gateway: names.Gateway(), Port: port}
	}
	d.caps = d.newCapabilities()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Serve reconciles state, then serves the API on the unix socket until ctx
// ends or a client asks for shutdown. Running VMs are left running: the next
// daemon adopts them.
func (d *Daemon) Serve(ctx context.Context) error {
	defer d.lock.Close()
	defer d.store.Close()

	ln, err := listenSocket(d.paths.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(d.paths.Socket)

	if err := d.reconcile(ctx); err != nil {
		d.log.Error("reconciling state", "err", err)
	}
	d.setupHost(ctx)
	defer func() {
		if d.dns != nil {
			d.dns.Close()
		}
	}()

	srv := &http.Server{Handler: d.routes(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if web := d.startWeb(); web != nil {
		defer web.Close()
	}
	d.log.Info("bangerd serving", "socket", d.paths.Socket, "version", Version, "pid", os.Getpid())

	select {
	case <-ctx.Done():
	case <-d.shutdown:
	case err := <-errc:
		return fmt.Errorf("serving %s: %w", d.paths.Socket, err)
	}
	d.log.Info("bangerd stopping; running VMs keep running")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	d.cancel()
	d.wg.Wait()
	return nil
}

// startWeb serves the web UI on cfg.WebListenAddr, through the daemon's own
// API socket. It answers only bangerd's own user (the TCP peer's uid) and
// browsers logged in with the link 'banger ui' makes from the secret file
// in the state dir. A failure to start is logged, not fatal.
func (d *Daemon) startWeb() *http.Server {
	if d.cfg.WebListenAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", d.cfg.WebListenAddr)
	if err != nil {
		d.log.Warn("web UI not started: set web_listen_addr to a free address, or \"\" to turn it off", "err", err)
		return nil
	}
	secret, err := login.Setup(filepath.Join(d.paths.StateDir, login.FileName), login.File{
		URL: web.URL(ln.Addr()), Listen: ln.Addr().String(), Auth: d.cfg.WebAuth, PID: os.Getpid()})
	if err != nil {
		ln.Close()
		d.log.Error("web UI not started", "err", err)
		return nil
	}
	roots := d.cfg.WebFileRoots
	if !d.cfg.WebFileRootsSet() {
		home, _ := os.UserHomeDir()
		roots = []string{home, d.paths.DataDir}
	}
	ui, err := web.New(rpc.NewClient(d.paths.Socket), web.Options{Log: d.log.With("component", "web"), Context: d.ctx,
		Owner: d.uid, LoginOnly: d.cfg.WebAuth == "login", Login: secret, FileRoots: roots})
	if err != nil {
		ln.Close()
		d.log.Error("web UI not started", "err", err)
		return nil
	}
	srv := ui.Serve(ln)
	d.log.Info("web UI serving", "url", secret.URL, "auth", d.cfg.WebAuth, "file_roots", roots, "login_link", "banger ui")
	return srv
}

// listenSocket listens on path with mode 0600, replacing a stale socket but
// refusing to steal one that a live daemon answers on.
func listenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("bangerd is already running on %s: stop it with 'banger daemon stop'", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("securing %s: %w", path, err)
	}
	return ln, nil
}

// lockFile takes an exclusive flock so two daemons never share a state
// dir, and writes the holder's pid into it for the refusal message.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		pid := strings.TrimSpace(string(holder))
		if pid == "" {
			pid = "?"
		}
		return nil, fmt.Errorf("another bangerd (pid %s) already uses this state (%s): stop it with 'banger daemon stop', or give this one its own XDG_STATE_HOME", pid, filepath.Dir(path))
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// vmLock returns the mutex that serializes operations on one VM name.
func (d *Daemon) vmLock(name string) *sync.Mutex {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.locks[name]
	if !ok {
		l = &sync.Mutex{}
		d.locks[name] = l
	}
	return l
}

// loadBundle discovers and loads the runtime bundle.
func (d *Daemon) loadBundle() (*bundle.Bundle, error) {
	wd, _ := os.Getwd()
	dir, warnings, err := bundle.Discover(bundle.DiscoverOptions{Explicit: d.cfg.RuntimeDir, Env: os.Getenv, WorkDir: wd})
	for _, w := range warnings {
		d.log.Warn(w)
	}
	if err != nil {
		return nil, err
	}
	return bundle.Load(dir)
}

// pickBackend picks the hypervisor backend named in the config; b (may be
// nil) can supply a bundled firecracker.
func (d *Daemon) pickBackend(b *bundle.Bundle) (hypervisor.Backend, error) {
	fc, _ := d.backend("firecracker", b)
	q, _ := d.backend("qemu", b)
	return hypervisor.Select(d.cfg.Hypervisor, fc, q)
}

// backend returns the named hypervisor backend. Firecracker's binary is the
// configured one, else the runtime bundle's (when b is given), else the one
// in PATH. Adopting a running VM needs no binary, so callers pass nil there.
func (d *Daemon) backend(name string, b *bundle.Bundle) (hypervisor.Backend, bool) {
	be, ok := d.backends[name]
	fc, isFC := be.(*firecracker.Backend)
	if !isFC || d.cfg.FirecrackerBinary != "" || b == nil || b.Firecracker == "" {
		return be, ok
	}
	c := *fc
	c.Binary = b.Path(b.Firecracker)
	return &c, true
}
