package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/virtiofs"
)

// MaxMountHostPath bounds a host folder's path.
const MaxMountHostPath = 1024

// ShareServer starts, adopts and stops the file servers of host folders;
// virtiofs.Server is the real one (VirtiofsShares).
type ShareServer interface {
	// Start serves sh, detached: the server outlives bangerd.
	Start(ctx context.Context, sh virtiofs.Share) (virtiofs.Process, error)
	// Adopt finds the running server of sh; an error wrapping
	// hypervisor.ErrNotRunning means there is none.
	Adopt(sh virtiofs.Share) (virtiofs.Process, error)
	// Stop ends the server of sh, if one runs, and removes its files.
	Stop(sh virtiofs.Share) error
}

// VirtiofsShares is s as a ShareServer.
func VirtiofsShares(s *virtiofs.Server) ShareServer { return virtiofsShares{s} }

type virtiofsShares struct{ s *virtiofs.Server }

func (v virtiofsShares) Start(ctx context.Context, sh virtiofs.Share) (virtiofs.Process, error) {
	return v.s.Start(ctx, sh)
}

func (v virtiofsShares) Adopt(sh virtiofs.Share) (virtiofs.Process, error) { return v.s.Adopt(sh) }
func (v virtiofsShares) Stop(sh virtiofs.Share) error                      { return v.s.Stop(sh) }

// shares are the file servers of vm's host folders, one socket each in its
// runtime directory: the i-th is the guest's virtio-fs tag banger<i>.
func shares(vm *store.VM) []virtiofs.Share {
	var out []virtiofs.Share
	for i, m := range vm.Mounts {
		out = append(out, virtiofs.Share{Source: m.Host, ReadOnly: m.ReadOnly, Socket: filepath.Join(vm.RuntimeDir, fmt.Sprintf("fs%d.sock", i))})
	}
	return out
}

// hypervisorShares are vm's host folders as the hypervisor sees them.
func hypervisorShares(vm *store.VM) []hypervisor.Share {
	var out []hypervisor.Share
	for i, sh := range shares(vm) {
		out = append(out, hypervisor.Share{Tag: agent.MountTag(i), Socket: sh.Socket})
	}
	return out
}

// guestMounts are vm's host folders as the guest agent mounts them.
func guestMounts(vm *store.VM) []agent.Mount {
	var out []agent.Mount
	for i, m := range vm.Mounts {
		out = append(out, agent.Mount{Tag: agent.MountTag(i), Path: m.Guest, ReadOnly: m.ReadOnly})
	}
	return out
}

// mountsCap serves a VM's host folders: a file server per folder before
// every boot, the guest agent's mounts once it answers, nothing left once
// the hypervisor has ended.
type mountsCap struct {
	NoCapability
	server ShareServer
	// agent reaches the guest agent of a running VM.
	agent func(vm *store.VM) (*agent.Client, error)
	// ctx is the engine's lifetime, which ends the watching.
	ctx func() context.Context
	log *slog.Logger

	mu      sync.Mutex
	serving map[string]*watched // by VM id
}

// watched are the servers of one VM that a mountsCap watches.
type watched struct {
	procs []virtiofs.Process
	stop  chan struct{}
}

func (*mountsCap) Name() string { return "host folders" }

func (c *mountsCap) Prepare(ctx context.Context, vm *store.VM, _ *guestconfig.Config) error {
	if len(vm.Mounts) == 0 {
		return nil
	}
	if c.server == nil {
		return errors.New("this bangerd serves no host folders")
	}
	if err := os.MkdirAll(vm.RuntimeDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", vm.RuntimeDir, err)
	}
	var procs []virtiofs.Process
	for _, sh := range shares(vm) {
		if fi, err := os.Stat(sh.Source); err != nil || !fi.IsDir() {
			return fmt.Errorf("host folder %s is gone: recreate it, or delete the VM with 'banger vm delete %s'", sh.Source, vm.Name)
		}
		p, err := c.server.Start(ctx, sh)
		if err != nil {
			for _, p := range procs {
				p.Close()
			}
			return err
		}
		procs = append(procs, p)
	}
	c.watch(vm, procs)
	return nil
}

// serverExitGrace is how long a file server may be gone before its VM's
// release, so that the end of the VM, which ends it too, is not reported.
const serverExitGrace = 5 * time.Second

// watch keeps the servers of vm until Release, and logs one that ends
// while the VM still needs it: its guest's mount then fails.
func (c *mountsCap) watch(vm *store.VM, procs []virtiofs.Process) {
	c.unwatch(vm.ID)
	w := &watched{procs: procs, stop: make(chan struct{})}
	c.mu.Lock()
	if c.serving == nil {
		c.serving = map[string]*watched{}
	}
	c.serving[vm.ID] = w
	c.mu.Unlock()
	name := vm.Name
	for i, p := range procs {
		m := vm.Mounts[i]
		go func() {
			select {
			case <-p.Done():
				// virtiofsd also ends with its VM, when QEMU closes the
				// socket: then the stop that follows releases it.
				select {
				case <-w.stop:
					return
				case <-c.ctx().Done():
					return
				case <-time.After(serverExitGrace):
				}
				c.log.Error("the file server of a host folder exited while its VM runs: the guest's mount fails until the VM is stopped and started",
					"vm", name, "host", m.Host, "guest", m.Guest, "pid", p.PID())
			case <-w.stop:
			case <-c.ctx().Done():
			}
		}()
	}
}

// unwatch stops watching the servers of the VM with this id.
func (c *mountsCap) unwatch(id string) {
	c.mu.Lock()
	w := c.serving[id]
	delete(c.serving, id)
	c.mu.Unlock()
	if w == nil {
		return
	}
	close(w.stop)
	for _, p := range w.procs {
		p.Close()
	}
}

// Ready has the guest agent mount the folders. The agent's answer is the
// guest's: it is bounded and cleaned before it reaches an error.
func (c *mountsCap) Ready(ctx context.Context, vm *store.VM, _ *agent.Health) error {
	if len(vm.Mounts) == 0 {
		return nil
	}
	if err := c.alive(vm); err != nil {
		return err
	}
	cl, err := c.agent(vm)
	if err != nil {
		return err
	}
	if err := cl.Mount(ctx, guestMounts(vm)); err != nil {
		if aerr := c.alive(vm); aerr != nil {
			return aerr
		}
		msg := guestText(err.Error(), 600)
		if strings.Contains(msg, "unknown op") {
			return fmt.Errorf("the guest agent of %s cannot mount host folders: its image predates them: rebuild the image ('make runtime-bundle', or 'banger image build')", vm.Name)
		}
		return fmt.Errorf("mounting host folders in %s: %s", vm.Name, msg)
	}
	return nil
}

// alive checks that every file server of vm still runs: one that died
// (virtiofsd gives up on a device it cannot serve) leaves the guest's
// mount hanging, so the boot fails with its log instead.
func (c *mountsCap) alive(vm *store.VM) error {
	c.mu.Lock()
	w := c.serving[vm.ID]
	c.mu.Unlock()
	if w == nil {
		return nil
	}
	for i, p := range w.procs {
		select {
		case <-p.Done():
			sh := shares(vm)[i]
			return fmt.Errorf("the file server of host folder %s exited%s", sh.Source, sh.LogTail())
		default:
		}
	}
	return nil
}

func (c *mountsCap) Release(_ context.Context, vm *store.VM) error {
	c.unwatch(vm.ID)
	var errs []error
	for _, sh := range shares(vm) {
		if err := c.stop(sh); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *mountsCap) stop(sh virtiofs.Share) error {
	if c.server == nil {
		return nil
	}
	return c.server.Stop(sh)
}

// Reconcile adopts the servers of running VMs and stops those of the others.
func (c *mountsCap) Reconcile(_ context.Context, vms []store.VM) error {
	var errs []error
	for i := range vms {
		vm := &vms[i]
		if len(vm.Mounts) == 0 || c.server == nil {
			continue
		}
		if vm.PID == 0 || (vm.State != StateRunning && vm.State != StateStarting) {
			for _, sh := range shares(vm) {
				if err := c.server.Stop(sh); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		var procs []virtiofs.Process
		for i, sh := range shares(vm) {
			p, err := c.server.Adopt(sh)
			if err != nil {
				c.log.Error("the file server of a host folder is gone: the guest's mount fails until the VM is stopped and started",
					"vm", vm.Name, "host", vm.Mounts[i].Host, "guest", vm.Mounts[i].Guest, "err", err)
				p = exited{}
			}
			procs = append(procs, p)
		}
		c.watch(vm, procs)
	}
	return errors.Join(errs...)
}

// exited stands for a server found gone: it is not watched again.
type exited struct{}

func (exited) PID() int              { return 0 }
func (exited) Done() <-chan struct{} { return nil }
func (exited) Close()                {}

// guestText bounds and cleans text that came from a guest.
func guestText(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return truncate(s, max)
}

// ValidateMounts checks the host folders of a create and returns them as
// they are kept: each host folder with its symlinks resolved. Host
// folders must be absolute directories bangerd's user can read (and
// write, unless read-only), not the host's root and neither inside nor
// around banger's own state (private: the state, data and runtime
// directories and the bundle, which holds the key to every guest); guest
// folders must pass agent.CheckGuestPath and not overlap. At most
// agent.MaxMounts, each host folder once.
func ValidateMounts(ms []store.Mount, private []string) ([]store.Mount, error) {
	if len(ms) > agent.MaxMounts {
		return nil, fmt.Errorf("%d host folders: a VM mounts at most %d", len(ms), agent.MaxMounts)
	}
	var out []store.Mount
	var guest []agent.Mount
	for i, m := range ms {
		host, err := checkHostFolder(m.Host, m.ReadOnly, private)
		if err != nil {
			return nil, err
		}
		for _, o := range out {
			if o.Host == host {
				return nil, fmt.Errorf("host folder %s is given twice: mount it once", host)
			}
		}
		out = append(out, store.Mount{Host: host, Guest: m.Guest, ReadOnly: m.ReadOnly})
		guest = append(guest, agent.Mount{Tag: agent.MountTag(i), Path: m.Guest, ReadOnly: m.ReadOnly})
	}
	if err := agent.CheckMounts(guest); err != nil {
		return nil, err
	}
	return out, nil
}

// checkHostFolder checks one host folder and returns it resolved.
func checkHostFolder(p string, readOnly bool, private []string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("host folder is empty: give HOSTDIR:GUESTDIR")
	case len(p) > MaxMountHostPath:
		return "", fmt.Errorf("host folder %s is longer than %d bytes", truncate(p, 40), MaxMountHostPath)
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", fmt.Errorf("host folder %q has control characters", truncate(p, 80))
	case !filepath.IsAbs(p):
		return "", fmt.Errorf("host folder %s is not an absolute path", p)
	case filepath.Clean(p) != p:
		return "", fmt.Errorf("host folder %s is not clean: write %s", p, filepath.Clean(p))
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("host folder %s: %w: create it first", p, unwrapPath(err))
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("host folder %s: %w", p, unwrapPath(err))
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("host folder %s is not a directory: mount the folder that holds it", p)
	}
	if real == "/" {
		return "", errors.New("host folder / is the host's whole filesystem: share a folder inside it")
	}
	for _, d := range private {
		if d == "" {
			continue
		}
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			d = rd
		}
		if within(real, d) || within(d, real) {
			return "", fmt.Errorf("host folder %s holds or is inside banger's own files (%s: VM disks, keys, state): share a folder beside them", p, d)
		}
	}
	if err := access(real, readOnly); err != nil {
		return "", err
	}
	return real, nil
}

// access checks that the guest's root, acting as virtiofs.IdentityFor's
// user, can read (and write, unless read-only) the folder.
func access(p string, readOnly bool) error {
	if _, err := virtiofs.IdentityFor(p, readOnly); err != nil {
		return err
	}
	mode := uint32(unix.R_OK | unix.X_OK)
	what := "read"
	if !readOnly {
		mode |= unix.W_OK
		what = "read and write"
	}
	if os.Geteuid() == 0 {
		// As root, access(2) says yes to everything: the folder's owner
		// is who the guest acts as, so check the owner's bits.
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return fmt.Errorf("host folder %s: %w", p, err)
		}
		need := uint32(0o500)
		if !readOnly {
			need |= 0o200
		}
		if st.Mode&need != need {
			return fmt.Errorf("host folder %s: its owner (uid %d), whom the guest acts as, cannot %s it: chmod u+rwx it, or add :ro", p, st.Uid, what)
		}
		return nil
	}
	if err := unix.Access(p, mode); err != nil {
		fix := "fix its permissions"
		if !readOnly {
			fix += ", or add :ro"
		}
		return fmt.Errorf("host folder %s: bangerd's user cannot %s it (%w): %s", p, what, err, fix)
	}
	return nil
}

// within reports whether p is dir or inside it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// unwrapPath drops the *PathError's repetition of the path.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
