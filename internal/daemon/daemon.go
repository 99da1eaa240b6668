// Package daemon is bangerd: it wires the store, the VM engine and its host capabilities, the DNS server, the API and the web UI, and serves them.
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
	"github.com/banger/banger/internal/daemon/api"
	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/firecracker"
	"github.com/banger/banger/internal/hypervisor/qemu"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/virtiofs"
	"github.com/banger/banger/internal/vm"
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
	// Backends replace the hypervisors (tests: hypervisortest); nil means
	// qemu and firecracker.
	Backends map[string]hypervisor.Backend
	// NoHost skips what touches the host beyond files and Runner (host
	// checks, reconciling the bridge and tables, DNS, the web UI): tests of
	// the API that run without root.
	NoHost bool
	// Dial reaches guests' SSH servers; nil means a net.Dialer (tests: the
	// fake hypervisor's guests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// APITimeouts bound the API's connections (zero: the defaults; tests
	// shorten them).
	APITimeouts api.Timeouts
	// Shares serves host folders; nil means virtiofsd (none with NoHost).
	Shares vm.ShareServer
}

// Daemon is one running bangerd.
type Daemon struct {
	cfg     config.Config
	paths   config.Paths
	log     *slog.Logger
	r       runner.Runner
	names   network.Names
	uid     int
	lock    *os.File
	store   *store.Store
	net     *network.Manager
	engine  *vm.Engine
	api     *api.Server
	noHost  bool
	started time.Time

	// cleanups undo what New and Start made, run last first by Close.
	cleanups []func() error
	srv      *http.Server
	served   chan error

	dns         *dns.Server
	dnsRedirect *dns.Redirect
	egress      *egress.Manager
	mu          sync.Mutex
	guestDNS    bool

	bundles bundleCache

	shutdown     chan struct{}
	shutdownOnce sync.Once
}

// New takes the single-instance lock beside the database, opens the store
// and builds the engine with its capabilities.
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
	cfg := opts.Config
	uid := os.Geteuid()
	names := cfg.Names(uid)
	d := &Daemon{
		cfg: cfg, paths: opts.Paths, log: opts.Log, r: opts.Runner, names: names, uid: uid,
		lock: lock, noHost: opts.NoHost, started: time.Now(), shutdown: make(chan struct{}),
		net: &network.Manager{R: opts.Runner, Bridge: names.Bridge, Subnet: names.Subnet},
	}
	d.cleanup(lock.Close)
	st, err := store.Open(opts.Paths.DB)
	if err != nil {
		return nil, errors.Join(err, d.Close())
	}
	d.store = st
	d.cleanup(st.Close)
	d.bundles.explicit = cfg.RuntimeDir
	d.bundles.log = opts.Log
	backends := opts.Backends
	if backends == nil {
		backends = map[string]hypervisor.Backend{
			"qemu":        &qemu.Backend{Binary: cfg.QEMUBinary, Log: opts.Log.With("backend", "qemu")},
			"firecracker": bundledFirecracker{Backend: firecracker.Backend{Binary: cfg.FirecrackerBinary, Log: opts.Log.With("backend", "firecracker")}, configured: cfg.FirecrackerBinary != ""},
		}
	}
	require := func(ctx context.Context, ops ...string) error {
		if opts.NoHost {
			return nil
		}
		if err := doctor.Require(ctx, opts.Runner, ops...); err != nil {
			return err
		}
		for _, op := range ops {
			if op == doctor.OpCreate && opts.Backends == nil {
				return doctor.RequireTUN()
			}
		}
		return nil
	}
	cacheDir, err := rootfs.DefaultCacheDir()
	if err != nil {
		cacheDir = filepath.Join(opts.Paths.StateDir, "cache")
	}
	images := &vm.Images{Store: st, R: opts.Runner, Log: opts.Log.With("component", "images"), DataDir: opts.Paths.DataDir,
		CacheDir: cacheDir, Default: cfg.DefaultImage, Requirements: require}
	d.engine = vm.New(vm.Config{
		Store:           st,
		Backends:        backends,
		Hypervisor:      cfg.Hypervisor,
		Bundle:          d.bundles.load,
		Images:          images,
		Network:         d.net,
		Names:           names,
		Runner:          opts.Runner,
		Log:             opts.Log,
		DataDir:         opts.Paths.DataDir,
		RuntimeDir:      opts.Paths.RuntimeDir,
		PrivateDirs:     []string{opts.Paths.StateDir, opts.Paths.DataDir, opts.Paths.RuntimeDir, cacheDir},
		VCPUs:           cfg.VCPUs,
		MemoryMiB:       cfg.MemoryMiB,
		WorkSize:        cfg.WorkSizeBytes(),
		MaxMemoryMiB:    hostMemoryMiB(),
		ReadyTimeout:    time.Duration(cfg.ReadyTimeoutSeconds) * time.Second,
		ConsoleLogMax:   consoleLogMax(cfg),
		WarmAfterCreate: cfg.WarmAfterCreate,
		Requirements:    require,
		Dial:            opts.Dial,
	})
	d.cleanup(func() error { d.engine.Close(); return nil })
	// The DNS server exists from the start, for the egress policies to
	// resolve through; Start binds it.
	d.dns = &dns.Server{Lookup: d.lookupName, Log: opts.Log.With("component", "dns")}
	if cfg.DNSUpstreamsSet() {
		d.dns.Upstreams = append([]string{}, cfg.DNSUpstreams...)
	}
	d.egress = &egress.Manager{R: opts.Runner, Table: egress.TableName(names.Table), Bridge: names.Bridge,
		Subnet: names.Subnet, Gateway: names.Gateway(), Resolver: d.dns, Log: opts.Log.With("component", "egress")}
	if port := cfg.BridgeDNSPort(uid); port != 53 {
		d.egress.DNSPort = port
	}
	d.dns.Filter = d.egress
	shares := opts.Shares
	if shares == nil && !opts.NoHost {
		shares = vm.VirtiofsShares(&virtiofs.Server{Runner: opts.Runner, Log: opts.Log.With("component", "virtiofsd")})
	}
	pool := &network.Pool{M: d.net, Size: cfg.TAPPoolSize, Prefix: names.PoolPrefix, UID: os.Getuid(), GID: os.Getgid(), Log: opts.Log.With("component", "tap-pool")}
	d.engine.SetCapabilities(vm.NewCapabilities(d.engine, vm.Host{
		Runner:    opts.Runner,
		Log:       opts.Log,
		Net:       d.net,
		Pool:      pool,
		Names:     names,
		NAT:       &nat.Manager{R: opts.Runner, Table: names.Table, Bridge: names.Bridge, Subnet: names.Subnet, Log: opts.Log.With("component", "nat")},
		Egress:    d.egress,
		Isolation: &isolation.Manager{R: opts.Runner, Table: names.Table, Ports: cfg.GuestPrivatePorts, Bridge: names.Bridge, TAPPrefixes: []string{names.TAPPrefix, names.PoolPrefix}},
		Known:     &vm.KnownHosts{Path: opts.Paths.KnownHosts},
		Images:    images,
		DNSServed: d.guestDNSServed,
		Upstreams: d.dnsUpstreams,
		Shares:    shares,
	}))
	if port := cfg.BridgeDNSPort(uid); port != 53 {
		d.dnsRedirect = &dns.Redirect{R: opts.Runner, Table: names.Table + "_dns", Bridge: names.Bridge, Gateway: names.Gateway(), Port: port}
	}
	d.api = &api.Server{
		Engine:     d.engine,
		Log:        opts.Log,
		Status:     d.status,
		Shutdown:   func() { d.shutdownOnce.Do(func() { close(d.shutdown) }) },
		KnownHosts: opts.Paths.KnownHosts,
		Timeouts:   opts.APITimeouts,
		KeyFile: func() (string, error) {
			b, err := d.engine.Bundle()
			if err != nil {
				return "", err
			}
			return b.Path(b.SSHKey), nil
		},
	}
	return d, nil
}

// Handler is the daemon's API.
func (d *Daemon) Handler() http.Handler { return d.api.Handler() }

func (d *Daemon) status() rpc.Status {
	return rpc.Status{
		Version:    Version,
		PID:        os.Getpid(),
		StartedAt:  d.started,
		Socket:     d.paths.Socket,
		StateDir:   d.paths.StateDir,
		DataDir:    d.paths.DataDir,
		RuntimeDir: d.paths.RuntimeDir,
	}
}

// cleanup registers fn for Close, which runs the cleanups last first.
func (d *Daemon) cleanup(fn func() error) { d.cleanups = append(d.cleanups, fn) }

// Serve is Start, Wait and Close: bangerd's whole life.
func (d *Daemon) Serve(ctx context.Context) error {
	err := d.Start(ctx)
	if err == nil {
		err = d.Wait(ctx)
	}
	return errors.Join(err, d.Close())
}

// Start listens on the unix socket, adopts the VMs on record, reconciles
// the host (the capabilities' bridge, pool, tables and pins, image
// directories, DNS), starts the web UI and then serves the API. A part of
// the host that cannot be reconciled is logged, and reported by 'banger
// doctor'; only a socket that cannot be served is an error.
func (d *Daemon) Start(ctx context.Context) error {
	ln, err := listenSocket(d.paths.Socket)
	if err != nil {
		return err
	}
	d.cleanup(func() error {
		if err := os.Remove(d.paths.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing socket %s: %w", d.paths.Socket, err)
		}
		return nil
	})
	if err := d.engine.Adopt(ctx); err != nil {
		d.log.Error("adopting VMs", "err", err)
	}
	if err := d.engine.Images().Reconcile(ctx); err != nil {
		d.log.Warn("reconciling image files", "err", err)
	}
	if !d.noHost {
		if err := d.engine.Reconcile(ctx); err != nil {
			d.log.Warn("reconciling the host", "err", err)
		}
		d.startDNS()
		d.engine.Go(func() { d.egress.Run(d.engine.Context()) })
		if web := d.startWeb(); web != nil {
			d.cleanup(web.Close)
		}
	}
	// Requests are answered only now, with the host reconciled and DNS
	// serving: a VM created earlier would boot with no resolver, as its
	// guest config reads what the host serves (clients that connected
	// meanwhile wait in the socket's backlog). The API sets read and write
	// deadlines per request (api.Timeouts): its streams run for minutes.
	d.srv = d.api.HTTPServer()
	d.served = make(chan error, 1)
	go func() { d.served <- d.srv.Serve(ln) }()
	d.cleanup(func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.srv.Shutdown(sctx); err != nil {
			d.srv.Close()
			return fmt.Errorf("shutting down the API: %w", err)
		}
		return nil
	})
	d.log.Info("bangerd serving", "socket", d.paths.Socket, "version", Version, "pid", os.Getpid())
	return nil
}

// Wait blocks until ctx ends, a client asks for shutdown or the API server
// fails.
func (d *Daemon) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
	case <-d.shutdown:
	case err := <-d.served:
		return fmt.Errorf("serving %s: %w", d.paths.Socket, err)
	}
	d.log.Info("bangerd stopping; running VMs keep running")
	return nil
}

// Close undoes what New and Start made, last first: the web UI, DNS, the
// API, the engine's lifetime, the store, the lock. Running VMs keep
// running: the next bangerd adopts them.
func (d *Daemon) Close() error {
	var errs []error
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, d.cleanups[i]())
	}
	d.cleanups = nil
	return errors.Join(errs...)
}

// startWeb serves the web UI on cfg.WebListenAddr, through the daemon's own
// API socket. It answers only bangerd's own user (the TCP peer's uid) and
// browsers logged in with the link 'banger ui' makes from the secret file
// in the state dir. A failure to start is logged, not fatal.
func (d *Daemon) startWeb() *http.Server {
	if d.cfg.WebListenAddr == "" || d.noHost {
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
	ui, err := web.New(rpc.NewClient(d.paths.Socket), web.Options{Log: d.log.With("component", "web"), Context: d.engine.Context(),
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

// bundledFirecracker is the Firecracker backend whose binary, unless the
// config names one, may come with the runtime bundle.
type bundledFirecracker struct {
	firecracker.Backend
	configured bool
}

// WithBundle returns the backend that uses b's firecracker when b has one.
func (f bundledFirecracker) WithBundle(b *bundle.Bundle) hypervisor.Backend {
	if f.configured || b == nil || b.Firecracker == "" {
		return f.Backend
	}
	c := f.Backend
	c.Binary = b.Path(b.Firecracker)
	return c
}

// bundleCache discovers and loads the runtime bundle once, and again only
// when its bundle.json changes.
type bundleCache struct {
	explicit string
	log      *slog.Logger

	mu    sync.Mutex
	b     *bundle.Bundle
	path  string
	mtime time.Time
	size  int64
}

func (c *bundleCache) load() (*bundle.Bundle, error) {
	wd, _ := os.Getwd()
	dir, warnings, err := bundle.Discover(bundle.DiscoverOptions{Explicit: c.explicit, Env: os.Getenv, WorkDir: wd})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, bundle.FileName)
	fi, err := os.Stat(path)
	if err != nil {
		return bundle.Load(dir)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.b != nil && c.path == path && c.mtime.Equal(fi.ModTime()) && c.size == fi.Size() {
		return c.b, nil
	}
	for _, w := range warnings {
		c.log.Warn(w)
	}
	b, err := bundle.Load(dir)
	if err != nil {
		return nil, err
	}
	c.b, c.path, c.mtime, c.size = b, path, fi.ModTime(), fi.Size()
	return b, nil
}

// hostMemoryMiB is the host's RAM, the most one VM may ask for; 0 when
// unknown.
func hostMemoryMiB() int {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
}

// consoleLogMax is console_log_max in bytes (validated when the config
// loaded), or 0 for the engine's default.
func consoleLogMax(cfg config.Config) int64 {
	n, err := cfg.ConsoleLogMaxBytes()
	if err != nil {
		return 0
	}
	return n
}
